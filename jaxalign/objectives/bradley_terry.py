"""Bradley-Terry reward-model training through the shared train step.

    objective = bradley_terry_objective(cfg, margin=0.0)
    state = train(loop, objective=objective, params=init_reward_params(cfg, rng),
                  logical_axes=reward_logical_axes(cfg), ...)     # jaxalign.train.trainer

The objective scores chosen and rejected in one forward pass of the reward model
(`jaxalign.reward.reward_scores`: each sequence is prompt + completion, read at its last real
token) and minimises `-log sigma(r_w - r_l - m)` (`jaxalign.losses.bradley_terry_loss`; m = 0,
or a constant / per-pair margin as in Llama 2's reward models); `eval/reward_accuracy` is the held-out pairwise
accuracy (ties count 1/2, as every pairwise loss of `jaxalign.losses` reports it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import distributed
from jaxalign.losses import bradley_terry_loss  # the loss; re-exported here for old imports
from jaxalign.objectives.columns import reads
from jaxalign.reward.model import reward_scores

__all__ = ["bradley_terry_loss", "bradley_terry_objective", "pairwise_accuracy"]


def bradley_terry_objective(cfg, *, margin: float = 0.0):
    """objective(params, batch, rng) -> (loss_B, weight_B, metrics) on preference batches.

    A batch's `margin` [B], if present, overrides the constant `margin`.
    """

    @reads("chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask", "weight",
           optional=("margin",))
    def objective(params, batch, rng):
        del rng
        b = batch["chosen_tokens"].shape[0]
        tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]])
        mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
        r = reward_scores(cfg, params, tokens, mask)
        loss_B, metrics = bradley_terry_loss(chosen_rewards=r[:b], rejected_rewards=r[b:],
                                             margin=batch.get("margin", margin))
        return loss_B, batch["weight"], metrics

    return objective


@functools.partial(jax.jit, static_argnums=0)
def _accuracy_terms(cfg, params, batch):
    _, w, m = bradley_terry_objective(cfg)(params, batch, None)
    return w, m["reward_accuracy"]


def pairwise_accuracy(cfg, params, batches, mesh=None) -> float:
    """Held-out accuracy (ties 1/2) over preference batches with `weight`, padding rows out.
    With `mesh`, each batch's rows are split over its data-parallel axes (with several
    processes each passes its own rows of every batch, and the accuracy is over all)."""
    hits, total = 0.0, 0.0
    columns = bradley_terry_objective(cfg).columns  # the margin does not change the accuracy
    for batch in batches:
        batch = {k: batch[k] for k in columns}
        if mesh is not None:
            batch = distributed.put_rows(batch, mesh)
        w, acc = (distributed.gather_rows(x) for x in _accuracy_terms(cfg, params, batch))
        hits += float(np.sum(w * acc))
        total += float(np.sum(w))
    return hits / max(total, 1e-9)
