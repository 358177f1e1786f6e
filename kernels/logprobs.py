"""Per-token log-probs of target tokens from final hidden states and the unembedding, never
holding the [B, T, V] logits: the XLA reference (`impl="xla"`) and a fused Pallas kernel
(`impl="pallas"`), selected by name in `token_logprobs`.

    logps_BxT = token_logprobs(hidden_BxTxD, unembed_DxV, targets_BxT, bias_V, softcap=None,
                               impl="xla")

Both compute `log softmax(softcap(hidden @ unembed + bias))[target]` in float32 (float64 for
float64 inputs) and differentiate to `hidden`, `unembed` and `bias` through a custom VJP that
recomputes logits rather than storing them.

XLA reference (`chunked_logprobs`, the default, and the only path that runs compiled on CPU).
  Algorithm: the sequence is split into chunks of `chunk_size` positions (padded at the end);
  `lax.map` computes each chunk's [B, chunk, V] logits, reduces them to the target logit and
  the log-sum-exp and drops them. The backward pass (`lax.scan` over chunks) recomputes each
  chunk's logits from the saved inputs and log-sum-exp (the rematerialisation `jax.checkpoint`
  would do), forms d logits = g * (onehot - softmax) (times the soft-cap's derivative), and
  adds the chunk's unembedding gradient one [D, vocab_block] slice at a time, in place.
  Memory: O(B * chunk * V) float32 for one chunk's logits, plus the [D, V] weight gradient.
  Why a custom VJP rather than `jax.checkpoint` around the chunk: autodiff of a checkpointed
  chunk adds each chunk's full [D, V] weight gradient as a separate temporary before the
  accumulation (1 GiB for D=2048, V=128k on XLA:CPU), which alone costs as much as a quarter of
  the logits it saves; see benchmarks/logprob_memory.py.

Fused Pallas kernel (`pallas_logprobs`: TPU through Mosaic, GPU through Triton, Pallas'
  interpreter on CPU): [rows, vocab] tiles with an online log-sum-exp, three kernels (forward;
  d hidden; d unembed and d bias), float32 accumulation (also for float64 inputs). Algorithm,
  tiling, VMEM / register budget and HBM traffic in its docstring and its kernels'.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import _logprobs_pallas as _pallas
from ._common import pallas_target


def _acc_dtype(*arrays):
    """float32, or float64 when an input is float64."""
    return jnp.result_type(jnp.float32, *arrays)


def _chunk_logits(h_BxCxD, unembed_DxV, bias_V, softcap):
    dtype = _acc_dtype(h_BxCxD, unembed_DxV, bias_V)
    logits_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD, unembed_DxV, preferred_element_type=dtype)
    logits_BxCxV = logits_BxCxV + bias_V.astype(dtype)
    if softcap is not None:  # Gemma-2's final soft-cap: cap * tanh(logits / cap)
        logits_BxCxV = softcap * jnp.tanh(logits_BxCxV / softcap)
    return logits_BxCxV


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_logprobs(hidden_NxBxCxD, unembed_DxV, bias_V, targets_NxBxC, vocab_block, softcap):
    return _chunked_logprobs_fwd(hidden_NxBxCxD, unembed_DxV, bias_V, targets_NxBxC,
                                 vocab_block, softcap)[0]


def _chunked_logprobs_fwd(hidden_NxBxCxD, unembed_DxV, bias_V, targets_NxBxC, vocab_block,
                          softcap):
    def chunk(args):
        h_BxCxD, t_BxC = args
        logits_BxCxV = _chunk_logits(h_BxCxD, unembed_DxV, bias_V, softcap)
        lse_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
        target_BxC = jnp.take_along_axis(logits_BxCxV, t_BxC[..., None], axis=-1)[..., 0]
        return target_BxC - lse_BxC, lse_BxC

    logps_NxBxC, lse_NxBxC = jax.lax.map(chunk, (hidden_NxBxCxD, targets_NxBxC))
    return logps_NxBxC, (hidden_NxBxCxD, unembed_DxV, bias_V, targets_NxBxC, lse_NxBxC)


def _add_weight_grad(dW_DxV, h_BxCxD, dlogits_BxCxV, vocab_block):
    """dW += h^T @ dlogits, one [D, vocab_block] slice at a time, updated in place."""
    V = dW_DxV.shape[1]
    Vb = min(vocab_block, V)

    def add_block(dW_DxV, start, size):
        dlogits_b = jax.lax.dynamic_slice_in_dim(dlogits_BxCxV, start, size, axis=2)
        update_DxVb = jnp.einsum("bcd,bcv->dv", h_BxCxD, dlogits_b,
                                 preferred_element_type=dW_DxV.dtype)
        old_DxVb = jax.lax.dynamic_slice_in_dim(dW_DxV, start, size, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(dW_DxV, old_DxVb + update_DxVb, start, axis=1)

    dW_DxV = jax.lax.fori_loop(0, V // Vb, lambda j, dW: add_block(dW, j * Vb, Vb), dW_DxV)
    if V % Vb:
        dW_DxV = add_block(dW_DxV, V - V % Vb, V % Vb)
    return dW_DxV


def _chunked_logprobs_bwd(vocab_block, softcap, residuals, g_NxBxC):
    hidden_NxBxCxD, unembed_DxV, bias_V, targets_NxBxC, lse_NxBxC = residuals
    V = unembed_DxV.shape[1]

    def chunk(carry, args):
        dW_DxV, db_V = carry
        h_BxCxD, t_BxC, lse_BxC, g_BxC = args
        # recomputed, not stored
        logits_BxCxV = _chunk_logits(h_BxCxD, unembed_DxV, bias_V, softcap)
        probs_BxCxV = jnp.exp(logits_BxCxV - lse_BxC[..., None])
        onehot_BxCxV = jax.nn.one_hot(t_BxC, V, dtype=probs_BxCxV.dtype)
        dlogits_BxCxV = g_BxC[..., None] * (onehot_BxCxV - probs_BxCxV)
        if softcap is not None:  # d(cap tanh(x / cap))/dx = 1 - tanh^2 = 1 - (capped / cap)^2
            dlogits_BxCxV = dlogits_BxCxV * (1 - jnp.square(logits_BxCxV / softcap))
        dh_BxCxD = jnp.einsum("bcv,dv->bcd", dlogits_BxCxV, unembed_DxV,
                              preferred_element_type=dlogits_BxCxV.dtype)
        dW_DxV = _add_weight_grad(dW_DxV, h_BxCxD, dlogits_BxCxV, vocab_block)
        return (dW_DxV, db_V + dlogits_BxCxV.sum((0, 1))), dh_BxCxD.astype(h_BxCxD.dtype)

    dtype = _acc_dtype(hidden_NxBxCxD, unembed_DxV, bias_V)
    init = (jnp.zeros(unembed_DxV.shape, dtype), jnp.zeros(bias_V.shape, dtype))
    (dW_DxV, db_V), dh_NxBxCxD = jax.lax.scan(
        chunk, init, (hidden_NxBxCxD, targets_NxBxC, lse_NxBxC, g_NxBxC))
    return dh_NxBxCxD, dW_DxV.astype(unembed_DxV.dtype), db_V.astype(bias_V.dtype), None


_chunked_logprobs.defvjp(_chunked_logprobs_fwd, _chunked_logprobs_bwd)


IMPLS = ("xla", "pallas")


def chunked_logprobs(hidden_BxTxD, unembed_DxV, bias_V, targets_BxT, *, chunk_size: int = 128,
                     vocab_block: int = 8192, softcap: float | None = None):
    """The XLA reference: [B, T] log-probs, one chunk of `chunk_size` positions at a time (see
    the module docstring). Inputs are not checked here (`jaxalign.losses` checks them)."""
    B, T, D = hidden_BxTxD.shape
    C = min(chunk_size, T)
    N = -(-T // C)  # number of chunks
    pad = N * C - T
    hidden_BxNxCxD = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0))).reshape(B, N, C, D)
    targets_NxBxC = jnp.pad(targets_BxT, ((0, 0), (0, pad))).reshape(B, N, C).swapaxes(0, 1)
    logps_NxBxC = _chunked_logprobs(
        hidden_BxNxCxD.swapaxes(0, 1), unembed_DxV, bias_V, targets_NxBxC, vocab_block, softcap)
    return logps_NxBxC.swapaxes(0, 1).reshape(B, N * C)[:, :T]


def token_logprobs(hidden_BxTxD, unembed_DxV, targets_BxT, bias_V=None, *,
                   softcap: float | None = None, impl: str = "xla", chunk_size: int = 128,
                   vocab_block: int = 8192, **pallas_options):
    """[B, T] float32 log-probs of `targets_BxT` (ids in [0, V)) under
    `softcap(hidden_BxTxD @ unembed_DxV + bias_V)`, by the implementation named `impl`:
    "xla" (`chunked_logprobs`, with `chunk_size` and `vocab_block`) or "pallas"
    (`pallas_logprobs`, with its `pallas_options`: block sizes, backend, interpret)."""
    if bias_V is None:
        bias_V = jnp.zeros((unembed_DxV.shape[1],), unembed_DxV.dtype)
    if impl == "xla":
        if pallas_options:
            raise ValueError(f"impl='xla' takes no Pallas options, got {sorted(pallas_options)}")
        return chunked_logprobs(hidden_BxTxD, unembed_DxV, bias_V, targets_BxT,
                                chunk_size=chunk_size, vocab_block=vocab_block, softcap=softcap)
    if impl == "pallas":
        return pallas_logprobs(hidden_BxTxD, unembed_DxV, bias_V, targets_BxT, softcap=softcap,
                               **pallas_options)
    raise ValueError(f"log-prob impl must be one of {IMPLS}, got {impl!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_logprobs(h_NxD, w_DxV, b_V, t_N, tiling):
    return _fused_logprobs_fwd(h_NxD, w_DxV, b_V, t_N, tiling)[0]


def _fused_logprobs_fwd(h_NxD, w_DxV, b_V, t_N, tiling):
    logp_N, lse_N = _pallas.PATHS[tiling.backend][0](h_NxD, w_DxV, b_V, t_N, tiling)
    return logp_N, (h_NxD, w_DxV, b_V, t_N, lse_N)


def _fused_logprobs_bwd(tiling, residuals, g_N):
    h_NxD, w_DxV, b_V, t_N, lse_N = residuals
    dh, dw, db = _pallas.PATHS[tiling.backend][1](h_NxD, w_DxV, b_V, t_N, lse_N,
                                                  g_N.astype(jnp.float32), tiling)
    return dh, dw, db, None


_fused_logprobs.defvjp(_fused_logprobs_fwd, _fused_logprobs_bwd)


def pallas_logprobs(hidden_BxTxD, unembed_DxV, bias_V, targets_BxT, *,
                    softcap: float | None = None, block_rows: int | None = None,
                    block_vocab: int | None = None, backend: str | None = None,
                    interpret=None):
    """[B, T] float32 `log softmax(softcap(hidden @ unembed + bias))[targets]` by a fused Pallas
    kernel that never holds an [N, V] array (N = B * T rows), forward or backward; targets must
    be ids in [0, V). Differentiable (first-order reverse mode) in hidden, unembed and bias
    through a custom VJP; cotangents have the inputs' dtypes; float32 accumulation throughout.

    Algorithm. Forward: each [block_rows, block_vocab] logit tile is a matmul, plus the bias,
    soft-capped; an online log-sum-exp folds the tiles of a row block into a running max m,
    a running sum l of exp(logit - m) and the target's logit (picked when its tile passes);
    out come logp = target - lse and lse = m + log l (the VJP's only residual besides the
    inputs). Backward: two kernels recompute the tiles from (hidden, unembed, bias, lse),
    dlogits = g (onehot(target) - exp(logit - lse)) (1 - tanh^2 when capped), and reduce
    d hidden = dlogits @ unembed.T over vocab tiles and d unembed = hidden.T @ dlogits,
    d bias = sum_rows dlogits over row tiles (as flash attention's backward does for dq and
    dk/dv). HBM traffic: the forward and d hidden kernels read unembed N / block_rows
    times, the d unembed kernel reads hidden V / block_vocab times (each kernel's docstring).

    backend="tpu" (Mosaic): grid (N / block_rows, V / block_vocab) ((vocab, rows) for
    d unembed), reduction axis last ("arbitrary"), blocks [block_rows, D] and [D, block_vocab]
    (D whole), f32 VMEM scratch ([block_rows, 1] x 3; [block_rows, D]; [D, block_vocab]).
    VMEM (s = input itemsize, br, bv the blocks) is the largest of
      forward    2 s (br D + D bv)          + 12 br bv
      d hidden   2 s (2 br D + D bv) + 4 br D + 12 br bv
      d unembed  2 s (br D + 2 D bv) + 4 D bv + 12 br bv
    and the defaults pick the largest br in (256 ... 8) and then bv in (512, 384, 256, 128)
    that keep it under 14 MiB of v5e's 16 MiB scoped VMEM (bfloat16, V = 128256: 256 x 384
    for D = 2048, 128 x 128 for D = 4096, 32 x 128 for D = 8192); where even 8 x 128 does not
    fit (float32 at D = 8192) or given blocks do not, the VMEM limit is raised to the need.
    block_vocab divides V, so unembed is not copied, unless V is not a multiple of 128 (or a
    given block_vocab does not divide V): then unembed and bias are padded to a multiple of
    block_vocab (one copy). Block sizes given: block_rows a multiple of 8, block_vocab of 128.

    backend="gpu" (Triton): one program per row tile (forward, d hidden: grid N / block_rows)
    or per vocab tile (d unembed: grid V / block_vocab), looping over the other axis and over
    D in chunks of 64 (any D: registers hold [block_rows, block_vocab] f32 plus one
    [block_rows, 64] and [64, block_vocab] chunk); masked loads at the vocabulary and D edges,
    so nothing is padded but the rows. Blocks are powers of two >= 16 (defaults 64 x 128).
    The backward accumulates d hidden [N, D] and d unembed [D, V] in float32 in HBM (read-
    modify-write per tile; each program owns its rows / columns), cast to the input dtypes
    after: one extra f32 [D, V] array for bfloat16 weights.

    interpret: None (on CPU only, Pallas' interpreter), a bool, or a `pltpu.InterpretParams`
    (TPU path only) passed through. Raises ValueError naming the option for an unknown backend,
    bad block sizes or InterpretParams on the GPU path.
    """
    backend, interpret = pallas_target(backend, interpret)
    B, T, D = hidden_BxTxD.shape
    V, N = unembed_DxV.shape[1], B * T
    itemsize = max(hidden_BxTxD.dtype.itemsize, unembed_DxV.dtype.itemsize)
    tiling = _pallas.tiling(backend, interpret, N, D, V, itemsize, block_rows, block_vocab, softcap)
    n_pad = -N % tiling.block_rows  # padded rows: zero hidden, target 0, sliced off
    h_NxD = jnp.pad(hidden_BxTxD.reshape(N, D), ((0, n_pad), (0, 0)))
    t_N = jnp.pad(targets_BxT.reshape(N).astype(jnp.int32), (0, n_pad))
    v_pad = -V % tiling.block_vocab if backend == "tpu" else 0
    if v_pad:  # TPU only, V not a multiple of 128 or of the given block_vocab: one copy
        unembed_DxV = jnp.pad(unembed_DxV, ((0, 0), (0, v_pad)))
        bias_V = jnp.pad(bias_V, (0, v_pad))
    logp_N = _fused_logprobs(h_NxD, unembed_DxV, bias_V, t_N, tiling)
    return logp_N[:N].reshape(B, T)
