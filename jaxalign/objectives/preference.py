"""Preference objectives (the DPO family, GenARM's ARM) and reference log-prob precomputation.

    objective = preference_objective(cfg, loss="dpo.sigmoid", loss_kwargs={"beta": 0.1},
                                     ref_params=ref_params)     # reference on the fly
    state = train(loop, objective=objective, ...)               # jaxalign.train.trainer

The objective runs chosen and rejected through the policy in one concatenated forward pass,
takes their summed log-probs with `jaxalign.models.completion_logprobs` (completion tokens
only), and applies any pairwise loss of the registry (`dpo.sigmoid`, `dpo.ipo`, `dpo.simpo`,
`genarm.arm`, ...). The reference policy is either closed over as frozen params (its forward is
wrapped in `stop_gradient` and its params are not an argument of the differentiated function)
or replaced by log-probs precomputed once (`precompute_reference_logps`) and carried in the
batch as `ref_chosen_logps` / `ref_rejected_logps` (`with_reference_logps`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import losses
from jaxalign.models import completion_logprobs
from jaxalign.objectives.columns import reads

PAIR_COLUMNS = ("chosen_tokens", "chosen_mask", "chosen_loss_mask", "rejected_tokens",
                "rejected_mask", "rejected_loss_mask")
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def _pair(batch: dict):
    cat = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])  # noqa: E731
    return cat("tokens"), cat("mask"), cat("loss_mask")


def preference_objective(model_cfg, *, loss: str = "dpo.sigmoid", loss_kwargs: dict | None = None,
                         ref_params=None, lean_logprobs: bool = False):
    """objective(params, batch, rng) -> (loss_B, weight_B, metrics) for the train step.

    With `ref_params` the reference log-probs are computed on the fly; without, they are the
    batch's `ref_chosen_logps` / `ref_rejected_logps` when it has them (precomputed), else the
    loss gets none (reference-free losses: genarm.arm, dpo.simpo, dpo.orpo, ...).
    """
    loss_fn = losses.get_loss(loss)
    loss_kwargs = dict(loss_kwargs or {})

    @reads(*PAIR_COLUMNS, "weight", optional=() if ref_params is not None else REFERENCE_COLUMNS)
    def objective(params, batch, rng):
        del rng
        tokens, mask, loss_mask = _pair(batch)
        b = batch["chosen_tokens"].shape[0]
        seq = completion_logprobs(model_cfg, params, tokens, mask, loss_mask, lean=lean_logprobs)
        ref = {}
        if ref_params is not None:
            ref_seq = completion_logprobs(model_cfg, jax.lax.stop_gradient(ref_params), tokens,
                                          mask, loss_mask, lean=lean_logprobs)
            ref_logps = jax.lax.stop_gradient(ref_seq.sum)
            ref = dict(ref_chosen_logps=ref_logps[:b], ref_rejected_logps=ref_logps[b:])
        elif "ref_chosen_logps" in batch:
            ref = {k: batch[k] for k in REFERENCE_COLUMNS}
        loss_B, metrics = loss_fn(policy_chosen_logps=seq.sum[:b],
                                  policy_rejected_logps=seq.sum[b:],
                                  chosen_lengths=seq.length[:b], rejected_lengths=seq.length[b:],
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
        logps = completion_logprobs(model_cfg, ref_params, tokens, mask, loss_mask).sum
        b = batch["chosen_tokens"].shape[0]
        return logps[:b], logps[b:]

    table = {}
    for batch in batches:
        chosen, rejected = jax.device_get(fwd({k: batch[k] for k in PAIR_COLUMNS}))
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
