"""RLOO (Ahmadian et al. 2024, arXiv 2402.14740): REINFORCE with a leave-one-out baseline over
the K samples of each prompt, the online baseline that stands in for the papers' PPO.

    adv = rloo_advantages(rewards_NxK=r)                     # r_i - mean_{j != i} r_j
    loss, m = policy_gradient(policy_logps=l, old_logps=l_old, advantages=adv, clip_eps=0.2)

The reward is the caller's: with the KL to the reference folded in,
`r = R(x, y) - beta * (log pi_old(y|x) - log pi_ref(y|x))` (sequence log-ratio), as RLOO does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxalign.losses import _checks


def rloo_advantages(*, rewards_NxK: Float[Array, "N K"]) -> Float[Array, "N K"]:
    """`r_i - (1/(K-1)) sum_{j != i} r_j` within each prompt's K samples (RLOO eq. (6));
    equals `K/(K-1) (r_i - mean_j r_j)`. K >= 2."""
    _checks.check_rank("rewards_NxK", rewards_NxK, 2)
    k = jnp.shape(rewards_NxK)[1]
    if k < 2:
        raise ValueError(f"rloo_advantages: a leave-one-out baseline needs K >= 2 samples per "
                         f"prompt, got K={k}")
    r = _checks.at_least_f32(rewards_NxK)
    return r - (r.sum(-1, keepdims=True) - r) / (k - 1)


def policy_gradient(*, policy_logps: Float[Array, "B"], old_logps: Float[Array, "B"],
                    advantages: Float[Array, "B"], clip_eps: float | None = None):
    """Per-sequence surrogate, [B]: `-min(rho A, clip(rho, 1 - eps, 1 + eps) A)` with the
    sequence ratio `rho = exp(log pi(y|x) - log pi_old(y|x))` (PPO's clipped objective, eq. (7)
    of arXiv 1707.06347, on whole sequences as RLOO's implementations do); `clip_eps=None`:
    `-rho A`, whose gradient at rho = 1 is REINFORCE's `-A grad log pi(y|x)`. `old_logps`
    and `advantages` receive no gradient. Metrics [B]: `ratio`, `clipped` (1 where the clip
    binds), `advantage`."""
    _checks.check_same_shape(policy_logps=policy_logps, old_logps=old_logps,
                             advantages=advantages)
    logp = _checks.at_least_f32(policy_logps)
    adv = jax.lax.stop_gradient(_checks.at_least_f32(advantages))
    ratio = jnp.exp(logp - jax.lax.stop_gradient(_checks.at_least_f32(old_logps)))
    surrogate = ratio * adv
    if clip_eps is None:
        loss, clipped = -surrogate, jnp.zeros_like(surrogate)
    else:
        _checks.check_positive("clip_eps", clip_eps)
        bounded = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
        loss = -jnp.minimum(surrogate, bounded)
        clipped = (bounded < surrogate).astype(jnp.float32)
    return loss, {"ratio": jax.lax.stop_gradient(ratio), "clipped": clipped, "advantage": adv}
