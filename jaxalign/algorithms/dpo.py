"""DPO-family training: the preference objective and reference log-prob precomputation.

The objective runs chosen and rejected through the policy in one concatenated forward pass,
takes sequence log-probs with `jaxalign.losses` (completion tokens only), and applies any
pairwise loss of the registry (`dpo.sigmoid`, `dpo.ipo`, `dpo.simpo`, ...). The reference
policy is either closed over as frozen params (its forward is wrapped in `stop_gradient` and its
params are not an argument of the differentiated function) or replaced by log-probs precomputed
once (`precompute_reference_logps`) and carried in the batch as `ref_chosen_logps` /
`ref_rejected_logps`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import losses
from jaxalign.models import Transformer, positions_from_mask, unembedding


def _pair(batch: dict):
    cat = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])  # noqa: E731
    return cat("tokens"), cat("mask"), cat("loss_mask")


def sequence_logps(model_cfg, params, tokens_BxT, mask_BxT, loss_mask_BxT, *, lean: bool = False):
    """Summed log-probs and completion lengths [B] of the completion tokens."""
    model = Transformer(model_cfg)
    positions = positions_from_mask(mask_BxT)
    logits, _, hidden = model.apply({"params": params}, tokens_BxT, positions, mask_BxT,
                                    return_logits=not lean)
    if lean:  # never materialises [B, T, V]
        token_lp, tmask = losses.shifted_token_logprobs_from_hidden(
            tokens_BxT=tokens_BxT, hidden_BxTxD=hidden,
            unembed_DxV=unembedding(model_cfg, params), completion_mask_BxT=loss_mask_BxT)
    else:
        token_lp, tmask = losses.shifted_token_logprobs(
            tokens_BxT=tokens_BxT, logits_BxTxV=logits, completion_mask_BxT=loss_mask_BxT)
    seq = losses.sequence_logprobs(token_logps_BxT=token_lp, mask_BxT=tmask)
    return seq.sum, seq.length


def preference_objective(model_cfg, *, loss: str = "dpo.sigmoid", loss_kwargs: dict | None = None,
                         ref_params=None, lean_logprobs: bool = False):
    """objective(params, batch, rng) -> (loss_B, weight_B, metrics) for the train step."""
    loss_fn = losses.get_loss(loss)
    loss_kwargs = dict(loss_kwargs or {})

    def objective(params, batch, rng):
        del rng
        tokens, mask, loss_mask = _pair(batch)
        b = batch["chosen_tokens"].shape[0]
        logps, lengths = sequence_logps(model_cfg, params, tokens, mask, loss_mask,
                                        lean=lean_logprobs)
        ref = {}
        if "ref_chosen_logps" in batch:
            ref = dict(ref_chosen_logps=batch["ref_chosen_logps"],
                       ref_rejected_logps=batch["ref_rejected_logps"])
        elif ref_params is not None:
            ref_logps, _ = sequence_logps(model_cfg, jax.lax.stop_gradient(ref_params), tokens,
                                          mask, loss_mask, lean=lean_logprobs)
            ref_logps = jax.lax.stop_gradient(ref_logps)
            ref = dict(ref_chosen_logps=ref_logps[:b], ref_rejected_logps=ref_logps[b:])
        loss_B, metrics = loss_fn(policy_chosen_logps=logps[:b], policy_rejected_logps=logps[b:],
                                  chosen_lengths=lengths[:b], rejected_lengths=lengths[b:],
                                  **ref, **loss_kwargs)
        return loss_B, batch["weight"], metrics

    return objective


def precompute_reference_logps(model_cfg, ref_params, batches, cache_path: str | None = None):
    """{dataset index: (chosen, rejected) summed log-probs}, cached to an .npz file.

    Batches need `index` [B] (row index in the dataset) and `weight` [B]; padding rows skipped.
    """
    if cache_path and os.path.exists(cache_path):
        data = np.load(cache_path)
        return dict(zip(data["index"].tolist(), zip(data["chosen"], data["rejected"])))

    @jax.jit
    def fwd(batch):
        tokens, mask, loss_mask = _pair(batch)
        logps, _ = sequence_logps(model_cfg, ref_params, tokens, mask, loss_mask)
        b = batch["chosen_tokens"].shape[0]
        return logps[:b], logps[b:]

    table = {}
    for batch in batches:
        chosen, rejected = jax.device_get(fwd({k: v for k, v in batch.items()
                                               if k.startswith(("chosen_", "rejected_"))}))
        for i, w, c, r in zip(batch["index"], batch["weight"], chosen, rejected):
            if w > 0:
                table[int(i)] = (np.float32(c), np.float32(r))
    if cache_path:
        idx = np.array(sorted(table), np.int64)
        tmp = cache_path + ".tmp.npz"
        np.savez(tmp, index=idx, chosen=np.array([table[i][0] for i in idx], np.float32),
                 rejected=np.array([table[i][1] for i in idx], np.float32))
        os.replace(tmp, cache_path)
    return table


def with_reference_logps(batch: dict, table: dict) -> dict:
    """Adds `ref_chosen_logps`/`ref_rejected_logps` [B] from a precomputed table."""
    rows = [table.get(int(i), (0.0, 0.0)) for i in batch["index"]]
    return {**batch, "ref_chosen_logps": np.array([r[0] for r in rows], np.float32),
            "ref_rejected_logps": np.array([r[1] for r in rows], np.float32)}
