"""A prompt's samples depend on (seed, prompt id, sample index) only: not on its batch, the
batch size, padding bucket or device count; shared prefill for n samples; guides."""

import jax
import numpy as np
import pytest

from jaxalign.sampling import GuideModel, Sampler, loop
from jaxalign.sharding import make_mesh

SETTINGS = dict(n=2, temperature=0.9, max_new_tokens=10, seed=7)  # top-p etc.: test_stop
MODES = ["batch_invariant", "default"]


def prompts(count=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 40, rng.integers(1, 20)).tolist() for _ in range(count)]


@pytest.fixture(scope="module")
def batch32(llama):
    """mode -> (sampler, output for the 32 prompts in one batch), built once per mode."""
    cfg, params = llama
    runs = {}

    def get(mode):
        if mode not in runs:
            sampler = Sampler(cfg, params, stop_ids=(), batch_invariant=mode == MODES[0])
            runs[mode] = sampler, sampler(prompt_ids=prompts(), **SETTINGS)
        return runs[mode]

    return get


def assert_same(mode, a, b, i, j):
    """Prompt i of output a == prompt j of output b: the same tokens, and log-probs

    batch_invariant: within 1e-5 (measured <= 2e-6: only the reductions over a longer padded
      cache, another padding bucket, round differently);
    default: XLA:CPU's YNNPACK matmuls also block by the number of rows, so logits move in
      their last bits with the batch: within 1e-5 relative (measured <= 1.6e-5 absolute, at a
      log-prob of -2.67, i.e. 6e-6 relative).
    """
    np.testing.assert_array_equal(a.tokens[i], b.tokens[j])
    np.testing.assert_array_equal(a.lengths[i], b.lengths[j])
    tol = dict(rtol=0, atol=1e-5) if mode == "batch_invariant" else dict(rtol=1e-5, atol=0)
    np.testing.assert_allclose(a.logprobs[i], b.logprobs[j], **tol)
    np.testing.assert_allclose(a.model_logprobs[i], b.model_logprobs[j], **tol)


@pytest.mark.parametrize("mode", MODES)
def test_alone_equals_in_a_batch_of_32(batch32, mode):
    sampler, full = batch32(mode)
    ps = prompts()
    assert len({len(p) for p in ps}) > 5  # several padding amounts and two length buckets
    # Alone: one row, no padding rows, its own bucket (16 for the short ones, not 32).
    # Prompt 2 is the one whose log-probs move most with the default kernels.
    for i in (0, 2, 4, 13, 21, 31):
        assert_same(mode, sampler(prompt_ids=[ps[i]], ids=[i], **SETTINGS), full, 0, i)


@pytest.mark.parametrize("mode", MODES)
def test_eight_devices_equal_one(batch32, llama, mode):
    assert jax.device_count() == 8
    _, full = batch32(mode)
    cfg, params = llama
    sharded = Sampler(cfg, params, stop_ids=(), mesh=make_mesh(data=8),
                      batch_invariant=mode == MODES[0])
    out = sharded(prompt_ids=prompts(), **SETTINGS)
    assert sharded.params["embed"]["embedding"].sharding.mesh.size == 8
    for i in range(32):
        assert_same(mode, out, full, i, i)


def test_seed_and_sample_index_matter_and_n_samples_share_one_prefill(batch32):
    sampler, full = batch32("default")
    ps = prompts()
    assert (full.tokens[:, 0] != full.tokens[:, 1]).any(axis=-1).all()  # different keys
    other = sampler(prompt_ids=ps, **{**SETTINGS, "seed": 8})
    assert (other.tokens[:, 0] != full.tokens[:, 0]).any(axis=-1).mean() > 0.9
    # Sample 0 of n=2 (the prompt prefilled once, its cache repeated) is sample 0 of n=1.
    one = sampler(prompt_ids=ps, **{**SETTINGS, "n": 1})
    np.testing.assert_array_equal(one.tokens[:, 0], full.tokens[:, 0])


def test_guide_with_weight_zero_reproduces_unguided_sampling(batch32, llama):
    plain, want = batch32("default")
    cfg, params = llama
    arm = jax.tree.map(lambda x: x * 1.5, params)  # another model as the "ARM"
    guided = Sampler(cfg, params, stop_ids=(), guides=[GuideModel(cfg, arm, weight=0.0)])
    got = guided(prompt_ids=prompts(), **SETTINGS)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.model_logprobs, want.model_logprobs, atol=1e-6, rtol=0)
    # A non-zero weight is a runtime argument: no new program, different samples.
    traces = dict(loop.TRACES)
    moved = guided(prompt_ids=prompts(), guide_weights=[2.0], **SETTINGS)
    assert dict(loop.TRACES) == traces
    assert (moved.tokens != want.tokens).any(axis=-1).mean() > 0.5


def test_weights_sharded_over_fsdp_and_model(batch32, llama):
    """Tensor-parallel and FSDP weights (2 x 2 x 2 mesh): the same samples as one device."""
    _, full = batch32("default")
    cfg, params = llama
    mesh = make_mesh(data=2, fsdp=2, model=2)
    sharded = Sampler(cfg, params, stop_ids=(), mesh=mesh)
    q = sharded.params["layers"][0]["attn"]["q"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
    out = sharded(prompt_ids=prompts()[:8], **SETTINGS)
    for i in range(8):
        assert_same("default", out, full, i, i)


def test_scanned_layers_sample_the_same(batch32, llama):
    """cfg.scan_layers keeps the stacked params and cache (lax.scan over layers) in the loop;
    the default decode layout runs one buffer per layer: the same samples."""
    _, full = batch32("default")
    cfg, params = llama
    scanned = Sampler(cfg.replace(scan_layers=True), params, stop_ids=())
    assert not isinstance(scanned.params["layers"], tuple)
    out = scanned(prompt_ids=prompts()[:8], **SETTINGS)
    for i in range(8):
        assert_same("default", out, full, i, i)
