"""The Pallas decode-attention kernel against its XLA reference, in Pallas' interpreter: both
backends, float32 and bfloat16, grouped heads, ragged and multi-block caches, left padding,
sliding windows, holes in the mask, soft-cap and scale; that slot blocks outside a row's valid
range are never read; and the TPU path lowered for TPU (and the GPU path for CUDA) from CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxalign.kernels import decode_attention as da

B, M, E = 4, 2, 3  # 4 rows, 2 KV heads of 3 queries each
STRICT = pltpu.InterpretParams(out_of_bounds_reads="raise", uninitialized_memory="nan")


def _mask_BxS(S):
    """One row per kind of mask; each row's own (last valid) slot is valid."""
    s = np.arange(S)
    now = S - 25  # row 2 decodes slot `now`: later slots are not filled yet
    return np.stack([
        s < S,  # a full cache
        s >= 150,  # left padding of 150 slots
        (s >= max(60, now - 39)) & (s <= now),  # left padding 60, a 40-slot sliding window
        (s >= 5) & (((s // 9) % 3 != 1) | (s == S - 1)),  # left padding 5 and holes
    ])


def _inputs(S, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, 1, M * E, H))
    k = rng.normal(size=(B, M, H, S))
    v = rng.normal(size=(B, M, S, H))
    mask = jnp.asarray(_mask_BxS(S))[:, None, None]
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype), jnp.asarray(v, dtype), mask


def _poison_unread_blocks(k_BxMxHxS, v_BxMxSxH, mask_Bx1x1xS, block_slots):
    """NaN in every slot block that holds none of a row's slots in [first valid, last valid]:
    a kernel that reads (and uses) such a block returns NaN."""
    valid_BxS = np.asarray(mask_Bx1x1xS[:, 0, 0])
    S = valid_BxS.shape[1]
    first = valid_BxS.argmax(1) // block_slots * block_slots
    last = (S - 1 - valid_BxS[:, ::-1].argmax(1)) // block_slots * block_slots + block_slots
    s = np.arange(S)
    unread_BxS = jnp.asarray((s < first[:, None]) | (s >= last[:, None]))
    assert unread_BxS.any()
    k = jnp.where(unread_BxS[:, None, None, :], jnp.nan, k_BxMxHxS)
    v = jnp.where(unread_BxS[:, None, :, None], jnp.nan, v_BxMxSxH)
    return k, v


# (dtype, S, H, scale, cap, TPU options, GPU options); S=200 is no multiple of 128 (one TPU
# block of all S; GPU blocks of 32 with a ragged last one), H=24 is no power of two (the GPU
# path pads q to 32 and masks the cache loads), S=384 has three TPU blocks of 128
CASES = {
    "f32-S200-H24": (jnp.float32, 200, 24, None, None, {}, dict(block_slots=32, num_splits=3)),
    "f32-S384-cap-scale": (jnp.float32, 384, 32, 0.3, 2.0, dict(block_slots=128),
                           dict(block_slots=64)),
    "bf16-S384-cap": (jnp.bfloat16, 384, 32, None, 2.0, dict(block_slots=128),
                      dict(block_slots=64)),
}
# float32: the same sums in another order; bfloat16: both round the output to bfloat16 (one
# ulp is 2 ** -8 in [0.5, 1)), and the kernel rounds the probabilities relative to a running
# max for the second product, the reference the normalised ones: two ulps
TOLERANCE = {jnp.float32: 1e-6, jnp.bfloat16: 2 ** -7}


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference_and_skips_unfilled_blocks(backend, case, interpret_for):
    dtype, S, H, scale, cap, tpu_options, gpu_options = CASES[case]
    q, k, v, mask = _inputs(S, H, dtype)
    if backend == "tpu":
        options = dict(tpu_options, interpret=interpret_for("tpu", STRICT))
        block_slots = tpu_options.get("block_slots", S)
    else:
        options = dict(gpu_options, interpret=interpret_for("gpu"))
        block_slots = gpu_options["block_slots"]
    if block_slots < S:  # the reference sees clean slots, the kernel NaN where it must not read
        k_read, v_read = _poison_unread_blocks(k, v, mask, block_slots)
    else:
        k_read, v_read = k, v
    want = da.decode_attention_xla(q, k, v, mask, scale, cap)
    got = da.decode_attention_pallas(q, k_read, v_read, mask, scale, cap, backend=backend,
                                     **options)
    assert got.shape == (B, 1, M * E, H) and got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def test_impl_pallas_through_decode_attention():
    q, k, v, mask = _inputs(200, 24, jnp.float32, seed=1)
    got = da.decode_attention(q, k, v, mask, None, 2.0, impl="pallas")  # CPU: TPU path, interpreted
    want = da.decode_attention(q, k, v, mask, None, 2.0, impl="xla")
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)


def _realistic_args():
    """bfloat16 decode step: batch 8, 8 KV heads of 4 queries of 128 dims, 4096 slots."""
    b, m, e, h, s = 8, 8, 4, 128, 4096
    sds = jax.ShapeDtypeStruct
    return (sds((b, 1, m * e, h), jnp.bfloat16), sds((b, m, h, s), jnp.bfloat16),
            sds((b, m, s, h), jnp.bfloat16), sds((b, 1, 1, s), jnp.bool_))


@pytest.mark.parametrize("backend, platform, call", [
    ("tpu", "tpu", "tpu_custom_call"),
    ("gpu", "cuda", "__gpu$xla.gpu.triton"),
])
def test_lowers_for_the_accelerator_from_cpu(backend, platform, call, lowered_text):
    f = lambda *a: da.decode_attention_pallas(*a, None, 50.0, backend=backend, interpret=False)
    assert call in lowered_text(f, _realistic_args(), platform)


@pytest.mark.parametrize("options, message", [
    pytest.param(dict(backend="tpu", block_slots=100), "block_slots", id="tpu-block-not-128s"),
    pytest.param(dict(backend="tpu", block_slots=256), "block_slots", id="tpu-block-not-dividing"),
    pytest.param(dict(backend="tpu", block_slots=0), "block_slots", id="tpu-block-0"),
    pytest.param(dict(backend="tpu", num_splits=2), "num_splits", id="tpu-splits"),
    pytest.param(dict(backend="gpu", block_slots=48), "block_slots", id="gpu-block-not-pow2"),
    pytest.param(dict(backend="gpu", block_slots=8), "block_slots", id="gpu-block-below-16"),
    pytest.param(dict(backend="gpu", num_splits=0), "num_splits", id="gpu-splits-0"),
    pytest.param(dict(backend="gpu", interpret=STRICT), "interpret", id="gpu-interpret-params"),
    pytest.param(dict(backend="cuda"), "backend", id="bad-backend"),
])
def test_bad_options_raise(options, message):
    q, k, v, mask = _inputs(384, 32, jnp.float32)
    with pytest.raises(ValueError, match=message):
        da.decode_attention_pallas(q, k, v, mask, **options)


def test_bad_shapes_and_mask_raise():
    q, k, v, mask = _inputs(200, 24, jnp.float32)
    with pytest.raises(ValueError, match="mask_Bx1x1xS must be bool"):
        da.decode_attention_pallas(q, k, v, mask.astype(jnp.int32), backend="tpu")
    with pytest.raises(ValueError, match="Q a multiple of M"):
        da.decode_attention_pallas(q[:, :, :5], k, v, mask, backend="tpu")
    with pytest.raises(ValueError, match="decode attention takes"):
        da.decode_attention_pallas(q, k, v[:, :, :100], mask, backend="gpu")
    with pytest.raises(ValueError, match="share a dtype"):
        da.decode_attention_pallas(q, k.astype(jnp.bfloat16), v, mask, backend="tpu")
