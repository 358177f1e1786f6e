"""The same training on 1 or 8 devices, with or without gradient accumulation, and with
precomputed or on-the-fly reference log-probs."""

import jax
import numpy as np

from jaxalign.models import init_params
from jaxalign.objectives import (precompute_reference_logps, preference_objective,
                                 with_reference_logps)
from jaxalign.sharding import make_mesh
from jaxalign.train.metrics import read_jsonl
from tests.train.batches import TINY, preference_batch
from tests.train.run_tiny import run


def _losses(workdir):
    return np.array([r["train/loss"] for r in read_jsonl(f"{workdir}/metrics.jsonl")
                     if "train/loss" in r])


def test_one_vs_eight_devices_and_accumulation(tmp_path):
    assert jax.device_count() == 8
    one = run(str(tmp_path / "one"), 6, checkpoint_every=100,
              mesh=make_mesh(data=1, devices=jax.devices()[:1]))
    eight = run(str(tmp_path / "eight"), 6, checkpoint_every=100, mesh=make_mesh(data=8))
    accum = run(str(tmp_path / "accum"), 6, checkpoint_every=100, micro_batches=8,
                mesh=make_mesh(data=1, devices=jax.devices()[:1]))
    curve = _losses(tmp_path / "one")
    assert len(curve) == 6 and curve[-1] < curve[0]
    np.testing.assert_allclose(_losses(tmp_path / "eight"), curve, rtol=1e-5)
    np.testing.assert_allclose(_losses(tmp_path / "accum"), curve, rtol=1e-5)
    for other in (eight, accum):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                     jax.device_get(other.params), jax.device_get(one.params))


def test_precomputed_reference_equals_on_the_fly(tmp_path):
    params = init_params(TINY, jax.random.key(0))
    policy = jax.tree.map(lambda x: x * 1.1, params)  # a policy that differs from the reference
    batches = [preference_batch(s) for s in range(3)]
    table = precompute_reference_logps(TINY, params, batches, str(tmp_path / "ref.npz"))
    assert len(table) == 24
    # the same weights reuse the cached table (no batches needed); others recompute it
    reloaded = precompute_reference_logps(TINY, params, [], str(tmp_path / "ref.npz"))
    assert reloaded.keys() == table.keys()
    assert len(precompute_reference_logps(TINY, policy, [], str(tmp_path / "ref.npz"))) == 0
    on_the_fly = preference_objective(TINY, loss_kwargs={"beta": 0.1}, ref_params=params)
    cached = preference_objective(TINY, loss_kwargs={"beta": 0.1})
    for b in batches:
        want, _, m_want = jax.jit(on_the_fly)(policy, b, None)
        got, _, m_got = jax.jit(cached)(policy, with_reference_logps(b, reloaded), None)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert np.abs(np.asarray(want) - np.log(2)).max() > 1e-3  # really not at h = 0
        np.testing.assert_allclose(m_got["chosen_reward"], m_want["chosen_reward"], atol=1e-5)
