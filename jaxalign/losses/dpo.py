"""The DPO family: pairwise losses on per-sequence log-probs.

Every function here shares one signature, so a training step can pick any of them by name
(`registry.get_loss("dpo.<name>")`) and call it with the same batch:

    loss_B, metrics = fn(policy_chosen_logps=..., policy_rejected_logps=...,
                         ref_chosen_logps=..., ref_rejected_logps=...,
                         chosen_lengths=..., rejected_lengths=..., beta=..., **variant_hparams)

Inputs are [B] arrays: summed completion log-probs `l(y)` (see `logprobs.sequence_logprobs`)
and completion token counts `|y|`. Each function is written on them as one `pair.PairLogps`
value `p` (built once, by `pair.pair_loss`), so its body is its equation. A variant that does
not use an input ignores it (the reference-free ones ignore `ref_*`, the summed ones ignore the
lengths); one that needs an input it was not given raises ValueError. ORPO's weight is the
paper's `lambda_` (`beta`, TRL's name, also accepted; not both). Outputs:
`(per_example_loss [B], metrics)`, with metrics of [B] float32 arrays (stop-gradiented):
  chosen_reward, rejected_reward: `beta * r(y)`, r = l_theta - l_ref (DPO's implicit reward);
      SimPO and ORPO have no reference: their reward is `beta * lbar_theta(y)` (`lambda *
      lbar` for ORPO); the length-normalised IPO reports `beta * r(y) / |y|`; reference-free
      DPO `beta * l(y)`.
  reward_margin: chosen_reward - rejected_reward.
  reward_accuracy: 1.0 where chosen_reward > rejected_reward, else 0.0 (1/2 on a tie).

Notation (`PairLogps`): r_w, r_l = log-ratios of chosen / rejected, h = r_w - r_l,
lbar = l / |y|, rbar = r / |y|.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses import _checks
from jaxalign.losses.pair import LENGTHS, REF, PairLogps, pair_loss, pair_metrics

# ORPO's log(1 - p) for p = exp(lbar) -> 1 is log(0): clamp lbar to at most -_LOG1MEXP_GUARD.
# exp(-1e-20) rounds to 1 in float32 and float64, but expm1(-1e-20) = -1e-20 stays exact.
_LOG1MEXP_GUARD = 1e-20


@pair_loss("dpo.sigmoid", uses=REF)
def sigmoid(p: PairLogps, *, beta):
    """DPO (Rafailov et al. 2023): `-log sigma(beta h)`. Summed log-probs; lengths ignored."""
    loss = jax.nn.softplus(-beta * p.h)  # DPO eq. (7)
    return loss, pair_metrics(beta * p.r_w, beta * p.r_l)


@pair_loss("dpo.cdpo", uses=REF)
def cdpo(p: PairLogps, *, beta, label_smoothing=0.0):
    """Conservative DPO: labels flipped with probability eps = `label_smoothing` in [0, 0.5).

    `(1-eps)(-log sigma(beta h)) + eps(-log sigma(-beta h))` (TRL `sigmoid` with label smoothing).
    """
    _checks.check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)
    eps, z = label_smoothing, beta * p.h
    loss = (1 - eps) * jax.nn.softplus(-z) + eps * jax.nn.softplus(z)  # cDPO (Mitchell 2023)
    return loss, pair_metrics(beta * p.r_w, beta * p.r_l)


@pair_loss("dpo.robust", uses=REF)
def robust(p: PairLogps, *, beta, label_smoothing=0.0):
    """Robust DPO (Chowdhury et al. 2024): unbiased under label-flip rate eps in [0, 0.5).

    `[(1-eps)(-log sigma(beta h)) - eps(-log sigma(-beta h))] / (1 - 2 eps)`; eps = 0 is DPO.
    """
    _checks.check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)
    eps, z = label_smoothing, beta * p.h
    # rDPO (Chowdhury et al. 2024): the unbiased estimate of the clean-label DPO loss
    loss = ((1 - eps) * jax.nn.softplus(-z) - eps * jax.nn.softplus(z)) / (1 - 2 * eps)
    return loss, pair_metrics(beta * p.r_w, beta * p.r_l)


@pair_loss("dpo.ipo", uses=REF)
def ipo(p: PairLogps, *, beta):
    """IPO on summed log-probs (the DPO reference code): `(h - 1/(2 beta))^2`; lengths ignored."""
    loss = jnp.square(p.h - 1 / (2 * beta))  # IPO eq. (17), tau = beta
    return loss, pair_metrics(beta * p.r_w, beta * p.r_l)


@pair_loss("dpo.ipo_length_normalized", uses=REF + LENGTHS)
def ipo_length_normalized(p: PairLogps, *, beta):
    """IPO as TRL computes it: each log-ratio divided by its completion length.

    `(r_w/|y_w| - r_l/|y_l| - 1/(2 beta))^2`; reported rewards are `beta * r / |y|` (as in TRL).
    """
    loss = jnp.square(p.rbar_w - p.rbar_l - 1 / (2 * beta))  # IPO eq. (17) on rbar = r / |y|
    return loss, pair_metrics(beta * p.rbar_w, beta * p.rbar_l)


@pair_loss("dpo.hinge", uses=REF)
def hinge(p: PairLogps, *, beta):
    """Hinge loss of SLiC / RSO on the DPO log-ratio: `relu(1 - beta h)`; lengths ignored."""
    loss = jax.nn.relu(1 - beta * p.h)  # RSO (Liu et al. 2023) hinge loss
    return loss, pair_metrics(beta * p.r_w, beta * p.r_l)


@pair_loss("dpo.reference_free")
def reference_free(p: PairLogps, *, beta):
    """DPO with `l_ref = 0`: `-log sigma(beta (l_w - l_l))`; ref and lengths ignored.

    Reported rewards are `beta * l_theta(y)`.
    """
    loss = jax.nn.softplus(-beta * (p.l_w - p.l_l))  # DPO eq. (7) with pi_ref = 1
    return loss, pair_metrics(beta * p.l_w, beta * p.l_l)


@pair_loss("dpo.simpo", uses=LENGTHS)
def simpo(p: PairLogps, *, beta, gamma_beta_ratio=0.5):
    """SimPO (Meng et al. 2024): `-log sigma(beta (lbar_w - lbar_l) - gamma)`, no reference.

    Takes `gamma_beta_ratio` = gamma / beta as the official code and TRL do (default 0.5).
    Reported rewards are `beta * lbar_theta(y)`. `ref_*` are ignored.
    """
    loss = jax.nn.softplus(-beta * (p.lbar_w - p.lbar_l - gamma_beta_ratio))  # SimPO eq. (6)
    return loss, pair_metrics(beta * p.lbar_w, beta * p.lbar_l)


def log1mexp(x):
    """log(1 - exp(x)) for x <= 0, as log(-expm1(x)), with x clamped to <= -1e-20.

    The clamp keeps x = 0 (a certain completion) finite: value about -46, and the gradient,
    zero above the clamp, finite below it.
    """
    return jnp.log(-jnp.expm1(jnp.minimum(x, -_LOG1MEXP_GUARD)))


@pair_loss("dpo.orpo", uses=LENGTHS, scale="lambda_", old="beta")
def orpo(p: PairLogps, *, lambda_):
    """ORPO (Hong et al. 2024): `NLL(y_w) - lambda * log sigma(log odds ratio)`, no reference.

    `lambda_` is the paper's lambda (paper default 0.1); `beta`, TRL's name for it, is accepted
    instead (configs use it), never both. NLL(y_w) = -lbar_w, the mean token NLL of the chosen
    completion. Reported rewards are `lambda * lbar_theta(y)` (as TRL's `beta * lbar`). Extra
    metrics: `nll`, `log_odds_ratio`. `ref_*` are ignored.
    """
    lbar_w, lbar_l = p.lbar_w, p.lbar_l
    # ORPO eq. (4)-(5): log odds(y) = lbar - log(1 - exp(lbar)).
    log_odds_ratio = (lbar_w - lbar_l) - (log1mexp(lbar_w) - log1mexp(lbar_l))
    loss = -lbar_w + lambda_ * jax.nn.softplus(-log_odds_ratio)  # ORPO eq. (6)-(7)
    metrics = pair_metrics(lambda_ * lbar_w, lambda_ * lbar_l)
    metrics["nll"] = jax.lax.stop_gradient(-lbar_w)
    metrics["log_odds_ratio"] = jax.lax.stop_gradient(log_odds_ratio)
    return loss, metrics
