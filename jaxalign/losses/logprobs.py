"""Token and sequence log-probabilities: the one place they are computed.

Convention: the logits at position t predict token t+1. The `shifted_*` helpers take the
token ids `tokens_BxT`, the model outputs at every position and a `completion_mask_BxT` that
marks completion tokens in `tokens` (prompt and padding are 0), and return per-token log-probs
aligned with `tokens[:, 1:]` (shape [B, T-1], zero where masked) together with that mask.

Two ways to get the same numbers:
- from logits `[B, T, V]` (`token_logprobs`, `shifted_token_logprobs`);
- from final hidden states `[B, T, D]` and the unembedding `[D, V]`
  (`token_logprobs_from_hidden`, `shifted_token_logprobs_from_hidden`), which never holds more
  than one chunk of logits: it maps over chunks of the sequence and recomputes each chunk in
  the backward pass (the rematerialisation of `jax.checkpoint`, written as a custom VJP), so
  peak memory is O(B * chunk * V) instead of O(B * T * V).

Everything is accumulated in float32 whatever the input dtype (float64 if given float64).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jaxalign.losses import _checks


def token_logprobs(
    *, logits_BxTxV: Float[Array, "B T V"], targets_BxT: Int[Array, "B T"]
) -> Float[Array, "B T"]:
    """log softmax(logits)[target] at every position, float32, unmasked.

    Targets must be valid ids in [0, V); mask before calling (see `shifted_token_logprobs`).
    """
    logits_BxTxV = _checks.at_least_f32(logits_BxTxV)
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return target_logit_BxT - lse_BxT


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


def token_logprobs_from_hidden(
    *,
    hidden_BxTxD: Float[Array, "B T D"],
    unembed_DxV: Float[Array, "D V"],
    targets_BxT: Int[Array, "B T"],
    bias_V: Float[Array, "V"] | None = None,
    chunk_size: int = 128,
    vocab_block: int = 8192,
    softcap: float | None = None,
) -> Float[Array, "B T"]:
    """`token_logprobs(logits = hidden @ unembed + bias)` without materialising [B, T, V];
    with `softcap`, of `softcap * tanh(logits / softcap)` (Gemma-2's final soft-cap), applied
    per chunk in the forward and the backward pass.

    The sequence is split into chunks of `chunk_size` positions (padded at the end); each chunk
    computes its [B, chunk, V] logits in float32, reduces them to [B, chunk] and drops them. The
    backward pass recomputes each chunk's logits from the saved inputs and log-sum-exp (the
    rematerialisation `jax.checkpoint` would do) and adds the chunk's unembedding gradient one
    [D, vocab_block] slice at a time, in place. Gradients flow to `hidden_BxTxD`, `unembed_DxV`
    and `bias_V` (first order, reverse mode only).

    Why a custom VJP rather than `jax.checkpoint` around the chunk: autodiff of a checkpointed
    chunk adds each chunk's full [D, V] weight gradient as a separate temporary before the
    accumulation (1 GiB for D=2048, V=128k on XLA:CPU), which alone costs as much as a quarter
    of the logits it saves; see benchmarks/logprob_memory.py.
    """
    _checks.check_rank("hidden_BxTxD", hidden_BxTxD, 3)
    _checks.check_rank("unembed_DxV", unembed_DxV, 2)
    B, T, D = hidden_BxTxD.shape
    V = unembed_DxV.shape[1]
    if unembed_DxV.shape[0] != D:
        raise ValueError(f"unembed_DxV {list(unembed_DxV.shape)} does not match hidden dim {D}.")
    if targets_BxT.shape != (B, T):
        raise ValueError(f"targets_BxT {list(targets_BxT.shape)} must be [B, T] = {[B, T]}.")
    if bias_V is not None and bias_V.shape != (V,):
        raise ValueError(f"bias_V {list(bias_V.shape)} must be [V] = [{V}].")
    _checks.check_positive("chunk_size", chunk_size)
    _checks.check_positive("vocab_block", vocab_block)
    if softcap is not None:  # static: one of the custom VJP's nondiff arguments
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float, np.number)):
            raise ValueError(f"softcap must be a Python number (static) or None, got "
                             f"{type(softcap).__name__}")
        _checks.check_positive("softcap", softcap)
        softcap = float(softcap)

    C = min(chunk_size, T)
    N = -(-T // C)  # number of chunks
    pad = N * C - T
    hidden_BxNxCxD = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0))).reshape(B, N, C, D)
    targets_NxBxC = jnp.pad(targets_BxT, ((0, 0), (0, pad))).reshape(B, N, C).swapaxes(0, 1)
    if bias_V is None:
        bias_V = jnp.zeros((V,), unembed_DxV.dtype)
    logps_NxBxC = _chunked_logprobs(
        hidden_BxNxCxD.swapaxes(0, 1), unembed_DxV, bias_V, targets_NxBxC, vocab_block, softcap)
    return logps_NxBxC.swapaxes(0, 1).reshape(B, N * C)[:, :T]


def _next_token_targets(tokens_BxT, completion_mask_BxT):
    """Targets for every position (token t+1) and their mask; the last position has none."""
    if tokens_BxT.shape != completion_mask_BxT.shape:
        raise ValueError(
            f"tokens_BxT {list(tokens_BxT.shape)} and completion_mask_BxT "
            f"{list(completion_mask_BxT.shape)} must have the same shape.")
    _checks.check_rank("tokens_BxT", tokens_BxT, 2)
    mask_BxT = jnp.pad(completion_mask_BxT[:, 1:].astype(bool), ((0, 0), (0, 1)))
    # Masked ids may be anything (e.g. -100): replace them so the gather stays in range.
    targets_BxT = jnp.where(mask_BxT, jnp.pad(tokens_BxT[:, 1:], ((0, 0), (0, 1))), 0)
    return targets_BxT, mask_BxT


def shifted_token_logprobs(
    *,
    tokens_BxT: Int[Array, "B T"],
    logits_BxTxV: Float[Array, "B T V"],
    completion_mask_BxT: Bool[Array, "B T"],
) -> tuple[Float[Array, "B T-1"], Bool[Array, "B T-1"]]:
    """log p(tokens[:, t+1] | logits[:, t]) for t < T-1, zero outside the completion.

    Returns `(token_logps [B, T-1] float32, mask [B, T-1] bool)` with
    `mask = completion_mask_BxT[:, 1:]`.
    """
    if logits_BxTxV.shape[:2] != tokens_BxT.shape:
        raise ValueError(
            f"logits_BxTxV {list(logits_BxTxV.shape)} must start with tokens_BxT's shape "
            f"{list(tokens_BxT.shape)}.")
    targets_BxT, mask_BxT = _next_token_targets(tokens_BxT, completion_mask_BxT)
    # Computing on all T positions (last one unused) avoids copying logits[:, :-1].
    logps_BxT = token_logprobs(logits_BxTxV=logits_BxTxV, targets_BxT=targets_BxT)
    return jnp.where(mask_BxT, logps_BxT, 0.0)[:, :-1], mask_BxT[:, :-1]


def shifted_token_logprobs_from_hidden(
    *,
    tokens_BxT: Int[Array, "B T"],
    hidden_BxTxD: Float[Array, "B T D"],
    unembed_DxV: Float[Array, "D V"],
    completion_mask_BxT: Bool[Array, "B T"],
    bias_V: Float[Array, "V"] | None = None,
    chunk_size: int = 128,
    vocab_block: int = 8192,
    softcap: float | None = None,
) -> tuple[Float[Array, "B T-1"], Bool[Array, "B T-1"]]:
    """`shifted_token_logprobs` from hidden states, memory-lean (see the module docstring);
    `softcap`: the logits are soft-capped first (`token_logprobs_from_hidden`)."""
    targets_BxT, mask_BxT = _next_token_targets(tokens_BxT, completion_mask_BxT)
    logps_BxT = token_logprobs_from_hidden(
        hidden_BxTxD=hidden_BxTxD, unembed_DxV=unembed_DxV, targets_BxT=targets_BxT,
        bias_V=bias_V, chunk_size=chunk_size, vocab_block=vocab_block, softcap=softcap)
    return jnp.where(mask_BxT, logps_BxT, 0.0)[:, :-1], mask_BxT[:, :-1]


class SequenceLogprobs(NamedTuple):
    """Per-sequence reductions of masked token log-probs, all [B] float32."""

    sum: Float[Array, "B"]  # l(y) = sum_t log pi(y_t | x, y_<t)
    mean: Float[Array, "B"]  # lbar(y) = l(y) / |y|; 0 for an empty completion
    length: Float[Array, "B"]  # |y|, number of completion tokens


def sequence_logprobs(
    *, token_logps_BxT: Float[Array, "B T"], mask_BxT: Bool[Array, "B T"]
) -> SequenceLogprobs:
    """Sum, mean and length of the masked token log-probs over the last axis.

    Fully masked rows give sum = mean = length = 0 (no 0/0).
    """
    _checks.check_same_shape(token_logps_BxT=token_logps_BxT, mask_BxT=mask_BxT)
    mask_BxT = mask_BxT.astype(bool)
    total_B = jnp.where(mask_BxT, _checks.at_least_f32(token_logps_BxT), 0.0).sum(-1)
    length_B = mask_BxT.sum(-1).astype(total_B.dtype)
    return SequenceLogprobs(sum=total_B, mean=total_B / jnp.maximum(length_B, 1.0), length=length_B)
