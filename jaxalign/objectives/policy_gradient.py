"""The online RL objective: a clipped policy gradient on sampled completions (RLOO's update).

    objective = policy_gradient_objective(cfg, clip_eps=0.2)
    # batch: tokens, mask, loss_mask (the sampled completion's tokens), weight,
    #        advantage [B] (rloo_advantages of the KL-folded reward), old_logps [B]
    #        (log pi_old(y|x) of the policy that sampled, by the same full forward pass)

Loss per row: `losses.rloo.policy_gradient` on the summed completion log-probs; the train step
averages it over rows with weight. Metrics: ratio, clipped fraction, advantage, the policy's
log-prob of its completions.
"""

from __future__ import annotations

from jaxalign import losses
from jaxalign.models import completion_logprobs
from jaxalign.objectives.columns import reads


def policy_gradient_objective(model_cfg, *, clip_eps: float | None = 0.2,
                              lean_logprobs: bool = False):
    """objective(params, batch, rng) -> (loss [B], weight [B], metrics) of
    `losses.rloo.policy_gradient` (`clip_eps=None`: no clipping, REINFORCE's gradient)."""
    if clip_eps is not None and not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0 (or None: no clipping), got {clip_eps!r}")

    @reads("tokens", "mask", "loss_mask", "weight", "advantage", "old_logps")
    def objective(params, batch, rng):
        del rng
        seq = completion_logprobs(model_cfg, params, batch["tokens"], batch["mask"],
                                  batch["loss_mask"], lean=lean_logprobs)
        loss_B, m = losses.rloo.policy_gradient(
            policy_logps=seq.sum, old_logps=batch["old_logps"], advantages=batch["advantage"],
            clip_eps=clip_eps)
        return loss_B, batch["weight"], {**m, "policy_logp": seq.sum}

    return objective
