"""ReST's improve objective (Gulcehre et al. 2023, arXiv 2308.08998) for the shared train step.

    objective = rest_objective(cfg, threshold=0.8)      # NLL on the samples with R > 0.8
    it = Mapped(BatchIterator(ds, batch_size=32), token_weight)   # sft rows + a `reward` column

`J(theta) = E_{D_g}[1{R(x, y) > tau} L(x, y; theta)]`, L a loss of the registry
(`rest.thresholded_nll`, behaviour cloning on the kept samples: the paper's best) applied to
each row's per-token mean log-likelihood of its completion. tau is the batch's `threshold`
column (one per row: a global threshold, or each source's percentile) when it has one, else
the `threshold` argument; `tau = -inf` (the default) keeps every row (ReST's I = 0 step on all
of D_g, and BC). As a column the threshold is data, not a constant of the program, so every
improve step runs the same compiled step. With `token_weight` the step's loss is the
per-token cross-entropy of the kept completions. The improve loop (`jaxalign.algorithms.rest`)
already builds each dataset from the kept rows only, so the indicator here is a guard that
costs nothing, and the loss reads as the paper's equation.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxalign import losses
from jaxalign.models import completion_logprobs
from jaxalign.objectives.columns import reads


def rest_objective(model_cfg, *, loss: str = "rest.thresholded_nll",
                   threshold: float = float("-inf"), lean_logprobs: bool = False):
    """objective(params, batch, rng) -> (1{R > tau} * mean NLL [B], weight * 1{R > tau},
    metrics) on sft batches with a `reward` column (the normalised reward of each row) and
    optionally a `threshold` column."""
    loss_fn = losses.get_loss(loss)

    @reads("tokens", "mask", "loss_mask", "weight", "reward", optional=("threshold",))
    def objective(params, batch, rng):
        del rng
        seq = completion_logprobs(model_cfg, params, batch["tokens"], batch["mask"],
                                  batch["loss_mask"], lean=lean_logprobs)
        tau = batch.get("threshold", jnp.float32(threshold))
        loss_B, m = loss_fn(policy_logps=seq.mean, rewards=batch["reward"],
                            threshold=tau)  # ReST: 1{R(x, y) > tau} L(x, y)
        return loss_B, batch["weight"] * m["weight"], {"nll": m["nll"], "kept": m["weight"],
                                                       "reward": batch["reward"]}

    return objective
