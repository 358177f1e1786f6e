"""Token and sequence log-probabilities: the one place they are computed.

Convention: the logits at position t predict token t+1. The `shifted_*` helpers take the
token ids `tokens_BxT`, the model outputs at every position and a `completion_mask_BxT` that
marks completion tokens in `tokens` (prompt and padding are 0), and return per-token log-probs
aligned with `tokens[:, 1:]` (shape [B, T-1], zero where masked) together with that mask.

Two ways to get the same numbers:
- from logits `[B, T, V]` (`token_logprobs`, `shifted_token_logprobs`);
- from final hidden states `[B, T, D]` and the unembedding `[D, V]`
  (`token_logprobs_from_hidden`, `shifted_token_logprobs_from_hidden`), which never hold the
  [B, T, V] logits: `jaxalign.kernels.logprobs` computes them a chunk or a tile at a time and
  recomputes them in the backward pass (`impl="xla"`: chunks of the sequence, peak
  O(B * chunk * V); `impl="pallas"`: a fused kernel, tiles of positions x vocabulary).

Everything is accumulated in float32 whatever the input dtype (float64 if given float64).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jaxalign.kernels import logprobs as _kernel
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


def token_logprobs_from_hidden(
    *,
    hidden_BxTxD: Float[Array, "B T D"],
    unembed_DxV: Float[Array, "D V"],
    targets_BxT: Int[Array, "B T"],
    bias_V: Float[Array, "V"] | None = None,
    chunk_size: int = 128,
    vocab_block: int = 8192,
    softcap: float | None = None,
    impl: str = "xla",
    **pallas_options,
) -> Float[Array, "B T"]:
    """`token_logprobs(logits = hidden @ unembed + bias)` without materialising [B, T, V];
    with `softcap`, of `softcap * tanh(logits / softcap)` (Gemma-2's final soft-cap), applied
    per chunk in the forward and the backward pass.

    `impl` names the implementation (`jaxalign.kernels.logprobs`): "xla" (default), chunks of
    `chunk_size` positions whose logits are recomputed in the backward pass and whose weight
    gradient is added one [D, vocab_block] slice at a time; "pallas", the fused kernel tiled
    over positions and vocabulary with an online log-sum-exp (`pallas_options`: block sizes,
    `backend`, `interpret`). Gradients flow to `hidden_BxTxD`, `unembed_DxV` and `bias_V`
    (first order, reverse mode only).
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
    if impl not in _kernel.IMPLS:
        raise ValueError(f"impl must be one of {_kernel.IMPLS}, got {impl!r}")
    return _kernel.token_logprobs(hidden_BxTxD, unembed_DxV, targets_BxT, bias_V,
                                  softcap=softcap, impl=impl, chunk_size=chunk_size,
                                  vocab_block=vocab_block, **pallas_options)


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
    impl: str = "xla",
    **pallas_options,
) -> tuple[Float[Array, "B T-1"], Bool[Array, "B T-1"]]:
    """`shifted_token_logprobs` from hidden states, memory-lean (see the module docstring);
    `softcap`: the logits are soft-capped first; `impl`: "xla" or "pallas"
    (`token_logprobs_from_hidden`)."""
    targets_BxT, mask_BxT = _next_token_targets(tokens_BxT, completion_mask_BxT)
    logps_BxT = token_logprobs_from_hidden(
        hidden_BxTxD=hidden_BxTxD, unembed_DxV=unembed_DxV, targets_BxT=targets_BxT,
        bias_V=bias_V, chunk_size=chunk_size, vocab_block=vocab_block, softcap=softcap,
        impl=impl, **pallas_options)
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
