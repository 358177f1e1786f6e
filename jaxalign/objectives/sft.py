"""Supervised fine-tuning (maximum likelihood) for the shared train step.

    it = Mapped(BatchIterator(sft_ds, batch_size=32, seed=0), token_weight)  # algorithms.runner
    state = train(loop, objective=sft_objective(cfg), params=params, train_iter=it, ...)

The objective's per-example loss is the mean negative log-likelihood of the completion tokens
(`loss_mask`), from `jaxalign.models.completion_logprobs`. The step minimises
`sum(weight * loss) / sum(weight)`, so the batch `weight` picks the normalisation:
`token_weight` (weight = completion tokens of the row) gives the per-token cross-entropy of the
whole batch, the usual language-modelling loss; `example_weight` (1 per real row) gives the
mean over examples of each example's per-token loss.
"""

from __future__ import annotations

import numpy as np

from jaxalign.models import completion_logprobs
from jaxalign.objectives.columns import reads


def token_weight(batch: dict) -> dict:
    """weight [B] = completion tokens predicted in the row (0 for a padding row)."""
    return {**batch, "weight": batch["loss_mask"][:, 1:].sum(-1).astype(np.float32)}


def example_weight(batch: dict) -> dict:
    """weight [B] = 1 for a real row, 0 for a padding row."""
    return {**batch, "weight": batch["mask"].any(-1).astype(np.float32)}


def sft_objective(model_cfg):
    """objective(params, batch, rng) -> (mean completion NLL [B], batch weight [B], metrics)."""

    @reads("tokens", "mask", "loss_mask", "weight")
    def objective(params, batch, rng):
        del rng
        seq = completion_logprobs(model_cfg, params, batch["tokens"], batch["mask"],
                                  batch["loss_mask"])
        nll_B = -seq.mean  # mean NLL per completion token (0 for an empty row)
        return nll_B, batch["weight"], {"nll": nll_B}

    return objective
