"""The fused Pallas log-prob kernel (`jaxalign.kernels.logprobs.pallas_logprobs`) against the
XLA reference `chunked_logprobs`: values and gradients of both backends in Pallas' interpreter
(the TPU path under the strict interpreter: reads past an array raise, scratch starts as NaN;
compiled instead on a device session, see conftest.py), the TPU path lowered for TPU and the
GPU path for CUDA from this CPU, and the option checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxalign.kernels import _logprobs_pallas as pallas_kernels
from jaxalign.kernels import logprobs as kl

STRICT = pltpu.InterpretParams(out_of_bounds_reads="raise", uninitialized_memory="nan")
B, T, V = 2, 5, 300  # N = 10 rows and V = 300: multiples of neither the row nor the vocab tile


def _inputs(dtype, D):
    kh, kw, kb, kt = jax.random.split(jax.random.key(0), 4)
    h_BxTxD = jax.random.normal(kh, (B, T, D)).astype(dtype)
    w_DxV = (jax.random.normal(kw, (D, V)) * 0.3).astype(dtype)  # logits ~ +-2: the cap bites
    b_V = jax.random.normal(kb, (V,)).astype(dtype)
    t_BxT = jax.random.randint(kt, (B, T), 0, V).at[0, 0].set(V - 1).at[1, -1].set(0)
    return h_BxTxD, w_DxV, b_V, t_BxT


@functools.partial(jax.jit, static_argnums=0)
def _logps_and_grads(logps_fn, h_BxTxD, w_DxV, b_V, t_BxT):
    """Values and the VJP of an uneven cotangent (each position weighted differently)."""
    logps_BxT, vjp = jax.vjp(lambda h, w, b: logps_fn(h, w, b, t_BxT), h_BxTxD, w_DxV, b_V)
    g_BxT = jnp.linspace(-1.0, 2.0, B * T).reshape(B, T)
    return logps_BxT, vjp(g_BxT)


BLOCKS = {"tpu": dict(block_rows=8, block_vocab=128), "gpu": dict(block_rows=16, block_vocab=128)}


@pytest.mark.parametrize("backend, dtype, softcap, D", [
    pytest.param("tpu", jnp.float32, None, 32, id="tpu-f32"),
    pytest.param("tpu", jnp.bfloat16, 5.0, 32, id="tpu-bf16-softcap"),
    pytest.param("gpu", jnp.float32, 5.0, 80, id="gpu-f32-softcap"),  # D chunks 64 + 16 masked
    pytest.param("gpu", jnp.bfloat16, None, 32, id="gpu-bf16"),
])
def test_pallas_matches_the_xla_reference(backend, dtype, softcap, D, interpret_for):
    h, w, b, t = _inputs(dtype, D)
    interpret = interpret_for(backend, STRICT if backend == "tpu" else None)
    pallas = functools.partial(kl.token_logprobs, impl="pallas", softcap=softcap,
                               backend=backend, interpret=interpret, **BLOCKS[backend])
    logps, grads = _logps_and_grads(lambda h, w, b, t: pallas(h, w, t, b), h, w, b, t)
    ref_logps, ref_grads = _logps_and_grads(
        functools.partial(kl.chunked_logprobs, softcap=softcap), h, w, b, t)

    assert logps.shape == (B, T) and logps.dtype == jnp.float32
    # the same float32 sums from the same inputs, in another order
    np.testing.assert_allclose(logps, ref_logps, rtol=1e-5, atol=1e-5)
    for name, grad, ref, x in zip(("hidden", "unembed", "bias"), grads, ref_grads, (h, w, b)):
        assert grad.dtype == x.dtype and grad.shape == x.shape, name
        grad, ref = np.asarray(grad, np.float32), np.asarray(ref, np.float32)
        if dtype == jnp.float32:
            np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-5, err_msg=name)
        else:  # bfloat16 cotangents (8-bit significand: an ulp is 2^-8 relative), and the
            # kernel rounds dlogits to bfloat16 for the backward matmuls (as flash attention
            # does) where the reference multiplies in float32: a few ulps of the largest entry
            np.testing.assert_allclose(grad, ref, rtol=0, atol=2**-6 * np.abs(ref).max(),
                                       err_msg=name)


def test_tpu_path_lowers_for_tpu_forward_and_backward():
    """Mosaic's block-shape rules and the scratch/grid setup at a Llama-3 vocabulary, bfloat16,
    default blocks (lowering checks them without running anything)."""
    D, V = 2048, 128256
    args = (jax.ShapeDtypeStruct((4, 256, D), jnp.bfloat16),
            jax.ShapeDtypeStruct((D, V), jnp.bfloat16), jax.ShapeDtypeStruct((V,), jnp.bfloat16),
            jax.ShapeDtypeStruct((4, 256), jnp.int32))
    f = functools.partial(kl.pallas_logprobs, softcap=30.0, backend="tpu", interpret=False)
    grad = jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))
    forward = jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    backward = jax.jit(grad).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    assert forward.count("tpu_custom_call") == 1
    assert backward.count("tpu_custom_call") == 3  # forward, d hidden, d unembed and d bias
    # the defaults divide V (no copy of the unembedding) and fit v5e's 16 MiB of scoped VMEM
    for D, V in ((2048, 128256), (8192, 256000), (8192, 32000)):
        tiling = pallas_kernels.tiling("tpu", False, 4096, D, V, 2, None, None, None)
        assert V % tiling.block_vocab == 0, (D, V)
        assert pallas_kernels._tpu_vmem_bytes(tiling.block_rows, tiling.block_vocab, D, 2) <= 14 * 2**20
        assert tiling.vmem_limit is None
    # float32 at D = 8192 does not fit even 8 x 128 blocks: the VMEM limit is raised instead
    D, V = 8192, 32000
    tiling = pallas_kernels.tiling("tpu", False, 64, D, V, 4, None, None, None)
    assert (tiling.block_rows, tiling.block_vocab) == (8, 128) and tiling.vmem_limit > 16 * 2**20
    args = (jax.ShapeDtypeStruct((1, 64, D), jnp.float32),
            jax.ShapeDtypeStruct((D, V), jnp.float32), jax.ShapeDtypeStruct((V,), jnp.float32),
            jax.ShapeDtypeStruct((1, 64), jnp.int32))
    forward = jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    assert str(tiling.vmem_limit) in forward  # in the Mosaic call's configuration


def test_gpu_path_lowers_to_triton_forward_and_backward(lowered_text):
    """The Triton path's kernels lower for CUDA from CPU (ragged D and V, bfloat16)."""
    D, V = 200, 1000
    args = (jax.ShapeDtypeStruct((2, 50, D), jnp.bfloat16),
            jax.ShapeDtypeStruct((D, V), jnp.bfloat16), jax.ShapeDtypeStruct((V,), jnp.bfloat16),
            jax.ShapeDtypeStruct((2, 50), jnp.int32))
    f = functools.partial(kl.pallas_logprobs, softcap=30.0, backend="gpu", interpret=False)
    grad = jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))
    forward = lowered_text(f, args, "cuda")
    backward = lowered_text(grad, args, "cuda")
    assert forward.count("__gpu$xla.gpu.triton") == 1
    assert backward.count("__gpu$xla.gpu.triton") == 3  # forward, d hidden, d unembed and d bias


@pytest.mark.parametrize("options, named", [
    (dict(backend="cuda"), "backend"),
    (dict(backend="tpu", block_rows=12), "block_rows"),
    (dict(backend="tpu", block_vocab=100), "block_vocab"),
    (dict(backend="gpu", block_rows=24), "block_rows"),
    (dict(backend="gpu", block_vocab=8), "block_vocab"),
    (dict(backend="gpu", interpret=STRICT), "interpret"),
], ids=["backend", "tpu-rows", "tpu-vocab", "gpu-rows", "gpu-vocab", "gpu-interpret-params"])
def test_bad_options_raise_naming_the_option(options, named):
    h, w, b, t = _inputs(jnp.float32, 32)
    with pytest.raises(ValueError, match=named):
        kl.pallas_logprobs(h, w, b, t, **{"interpret": True, **options})
