"""Properties shared by every pairwise loss in the registry (DPO family, SPPO, GenARM, CODPO).

Permutation equivariance, jit == no-jit, vmap over a leading axis, finite values and gradients
at margins of +-1e4, and float64 gradient checks.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxalign.losses import get_loss

HPARAMS = {
    "dpo.sigmoid": dict(beta=0.1),
    "dpo.cdpo": dict(beta=0.1, label_smoothing=0.2),
    "dpo.robust": dict(beta=0.1, label_smoothing=0.2),
    "dpo.ipo": dict(beta=0.1),
    "dpo.ipo_length_normalized": dict(beta=0.1),
    "dpo.hinge": dict(beta=0.1),
    "dpo.simpo": dict(beta=2.0, gamma_beta_ratio=0.3),
    "dpo.orpo": dict(beta=0.1),
    "dpo.reference_free": dict(beta=0.1),
    "dpo.nca_pair": dict(beta=0.1),
    "dpo.bco_pair": dict(beta=0.1, delta=0.3),
    "dpo.exo_pair": dict(beta=0.1, label_smoothing=1e-3),
    "dpo.apo_zero": dict(beta=0.1),
    "dpo.apo_down": dict(beta=0.1),
    "dpo.sigmoid_norm": dict(beta=0.1),
    "dpo.discopop": dict(beta=0.1, tau=0.05),
    "sppo.sppo": dict(beta=0.1),
    "sppo.single": dict(beta=0.1),
    "sppo.hard": dict(beta=0.1),
    "genarm.arm": dict(beta=0.5, gamma=0.2),
    "cgpo.codpo": dict(beta=0.1, lambda_=0.5),
}
NAMES = sorted(HPARAMS)
DIFF_KEYS = ("policy_chosen_logps", "policy_rejected_logps")


def make_batch(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    logp = lambda: -rng.uniform(1.0, 30.0, shape).astype(dtype)
    return dict(
        policy_chosen_logps=logp(), policy_rejected_logps=logp(), ref_chosen_logps=logp(),
        ref_rejected_logps=logp(), chosen_lengths=rng.integers(1, 20, shape).astype(np.int32),
        rejected_lengths=rng.integers(1, 20, shape).astype(np.int32),
        chosen_win_rate=rng.uniform(0.5, 1.0, shape).astype(dtype),
        rejected_win_rate=rng.uniform(0.0, 0.5, shape).astype(dtype),
        pair_win_rate=rng.uniform(0.5, 1.0, shape).astype(dtype),
        weight=rng.integers(0, 2, shape).astype(dtype))


def call(name, batch):
    """Calls the loss with the batch entries its signature accepts."""
    fn = get_loss(name)
    accepted = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in batch.items() if k in accepted}, **HPARAMS[name])


@pytest.mark.parametrize("name", NAMES)
def test_permutation_equivariance_and_jit(name):
    batch = make_batch((6,))
    loss, metrics = call(name, batch)
    assert loss.shape == (6,) and all(m.shape == (6,) for m in metrics.values())
    perm = np.array([3, 0, 5, 1, 4, 2])
    loss_p, metrics_p = call(name, {k: v[perm] for k, v in batch.items()})
    np.testing.assert_allclose(loss_p, np.asarray(loss)[perm], rtol=1e-6)
    for k in metrics:
        np.testing.assert_allclose(metrics_p[k], np.asarray(metrics[k])[perm], rtol=1e-6)
    # XLA may fuse/reassociate under jit: compare to float32 rounding of O(1-10) inputs
    # (margins are differences of rounded rewards, so an absolute tolerance).
    loss_jit, metrics_jit = jax.jit(lambda b: call(name, b))(batch)
    np.testing.assert_allclose(loss_jit, loss, rtol=1e-6, atol=1e-6)
    for k in metrics:
        np.testing.assert_allclose(metrics_jit[k], metrics[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_leading_axis(name):
    batch = make_batch((3, 4))
    stacked = jax.vmap(lambda b: call(name, b)[0])(batch)
    rows = [call(name, {k: v[i] for k, v in batch.items()})[0] for i in range(3)]
    np.testing.assert_allclose(stacked, np.stack(rows), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_finite_at_huge_margins(name):
    batch = make_batch((2,))
    big = np.float32(1e4)
    batch.update(policy_chosen_logps=np.array([-1e-3, -big], np.float32),
                 policy_rejected_logps=np.array([-big, -1e-3], np.float32),
                 ref_chosen_logps=np.zeros(2, np.float32),
                 ref_rejected_logps=np.zeros(2, np.float32),
                 chosen_lengths=np.ones(2, np.int32), rejected_lengths=np.ones(2, np.int32),
                 weight=np.ones(2, np.float32))

    def total(pc, pr):
        pair = {"policy_chosen_logps": pc, "policy_rejected_logps": pr}
        return call(name, {**batch, **pair})[0].sum()

    value, grads = jax.value_and_grad(total, argnums=(0, 1))(
        batch["policy_chosen_logps"], batch["policy_rejected_logps"])
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_float64(name):
    with jax.enable_x64(True):
        batch = make_batch((3,), seed=1, dtype=np.float64)
        batch["weight"] = np.ones(3)
        f = lambda pc, pr: call(name, {**batch, "policy_chosen_logps": pc,
                                       "policy_rejected_logps": pr})[0]
        x = tuple(jnp.asarray(batch[k], jnp.float64) for k in DIFF_KEYS)
        assert f(*x).dtype == jnp.float64
        check_grads(f, x, order=1, modes=("rev",), eps=1e-4)
