"""A completion's log-probs under a model: the one forward pass every objective and the ARM use.

    token_lp, tmask = completion_token_logprobs(cfg, params, tokens, mask, loss_mask)  # [B, T-1]
    seq = completion_logprobs(cfg, params, tokens, mask, loss_mask)   # seq.sum / .mean / .length

The forward is `Transformer(cfg)` on left- or right-padded rows (positions from `mask`); the
arithmetic is `jaxalign.losses` (`shifted_token_logprobs`, `sequence_logprobs`), float32.
`lean=True` takes the log-probs from the final hidden states and the unembedding in chunks
(`losses.shifted_token_logprobs_from_hidden`), never materialising the [B, T, V] logits, by
the XLA chunked path or the fused Pallas kernel (`cfg.logprob_impl`).
Used by the preference and SFT objectives (`jaxalign.objectives`), the gym's evaluation and
GenARM's ARM (`jaxalign.reward.arm`).
"""

from __future__ import annotations

from jaxtyping import Array, Bool, Float, Int

from jaxalign import losses
from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import Transformer, positions_from_mask, unembedding


def completion_token_logprobs(
    cfg: ModelConfig, params, tokens_BxT: Int[Array, "B T"], mask_BxT: Bool[Array, "B T"],
    loss_mask_BxT: Bool[Array, "B T"], *, lean: bool = False,
) -> tuple[Float[Array, "B T-1"], Bool[Array, "B T-1"]]:
    """(token log-probs [B, T-1] float32, mask [B, T-1] bool): entry t is
    log pi(tokens[:, t+1] | tokens[:, :t+1]) where `loss_mask_BxT[:, t+1]` (a completion token,
    inside `mask_BxT`), else 0; the mask is `loss_mask_BxT[:, 1:]`. `cfg.logprob_impl="pallas"`
    takes them from the hidden states with the fused kernel (lean whatever `lean` says)."""
    lean = lean or cfg.logprob_impl == "pallas"
    # parent=None: an unbound module, so this also runs inside another module's method (the ARM)
    logits_BxTxV, _, hidden_BxTxD = Transformer(cfg, parent=None).apply(
        {"params": params}, tokens_BxT, positions_from_mask(mask_BxT), mask_BxT,
        return_logits=not lean)
    if lean:
        return losses.shifted_token_logprobs_from_hidden(
            tokens_BxT=tokens_BxT, hidden_BxTxD=hidden_BxTxD,
            unembed_DxV=unembedding(cfg, params), completion_mask_BxT=loss_mask_BxT,
            softcap=cfg.final_logit_softcap,  # as Transformer.logits applies it
            impl=cfg.logprob_impl)
    return losses.shifted_token_logprobs(
        tokens_BxT=tokens_BxT, logits_BxTxV=logits_BxTxV, completion_mask_BxT=loss_mask_BxT)


def completion_logprobs(cfg: ModelConfig, params, tokens_BxT: Int[Array, "B T"],
                        mask_BxT: Bool[Array, "B T"], loss_mask_BxT: Bool[Array, "B T"], *,
                        lean: bool = False) -> losses.SequenceLogprobs:
    """`SequenceLogprobs` (sum, mean, length; [B] float32) of the `loss_mask_BxT` tokens."""
    token_lp, tmask = completion_token_logprobs(cfg, params, tokens_BxT, mask_BxT,
                                                loss_mask_BxT, lean=lean)
    return losses.sequence_logprobs(token_logps_BxT=token_lp, mask_BxT=tmask)
