"""The DPO family: pairwise losses on per-sequence log-probs.

Every function here shares one signature, so a training step can pick any of them by name
(`registry.get_loss("dpo.<name>")`) and call it with the same batch:

    loss_B, metrics = fn(policy_chosen_logps=..., policy_rejected_logps=...,
                         ref_chosen_logps=..., ref_rejected_logps=...,
                         chosen_lengths=..., rejected_lengths=..., beta=..., **variant_hparams)

Inputs are [B] arrays: summed completion log-probs `l(y)` (see `logprobs.sequence_logprobs`)
and completion token counts `|y|`. A variant that does not use an input ignores it (the
reference-free ones ignore `ref_*`, the summed ones ignore the lengths); one that needs an
input it was not given raises ValueError. Outputs: `(per_example_loss [B], metrics)`, with
metrics of [B] float32 arrays (stop-gradiented):
  chosen_reward, rejected_reward: `beta * r(y)`, r = l_theta - l_ref (DPO's implicit reward);
      SimPO and ORPO have no reference: their reward is `beta * lbar_theta(y)`; the
      length-normalised IPO reports `beta * r(y) / |y|`; reference-free DPO `beta * l(y)`.
  reward_margin: chosen_reward - rejected_reward.
  reward_accuracy: 1.0 where chosen_reward > rejected_reward, else 0.0.

Notation: r_w, r_l = log-ratios of chosen / rejected, h = r_w - r_l, lbar = l / |y|.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxalign.losses import _checks

Metrics = dict[str, Float[Array, "B"]]

# ORPO's log(1 - p) for p = exp(lbar) -> 1 is log(0): clamp lbar to at most -_LOG1MEXP_GUARD.
# exp(-1e-20) rounds to 1 in float32 and float64, but expm1(-1e-20) = -1e-20 stays exact.
_LOG1MEXP_GUARD = 1e-20

_f32 = _checks.at_least_f32
_POLICY = ("policy_chosen_logps", "policy_rejected_logps")
_REF = ("ref_chosen_logps", "ref_rejected_logps")
_LENGTHS = ("chosen_lengths", "rejected_lengths")


def _check(name, beta, arrays, required):
    """Validates before tracing; returns the required arrays as float32."""
    _checks.check_positive("beta", beta)
    used = {k: arrays[k] for k in required}
    _checks.check_required(name, **used)
    _checks.check_same_shape(**used)
    return {k: _f32(v) for k, v in used.items()}


def _log_ratios(name, beta, arrays, *, length_normalized=False):
    """r_w, r_l = l_theta - l_ref of chosen and rejected (each divided by |y| if asked)."""
    a = _check(name, beta, arrays, _POLICY + _REF + (_LENGTHS if length_normalized else ()))
    r_w = a["policy_chosen_logps"] - a["ref_chosen_logps"]
    r_l = a["policy_rejected_logps"] - a["ref_rejected_logps"]
    if length_normalized:
        r_w = r_w / jnp.maximum(a["chosen_lengths"], 1.0)
        r_l = r_l / jnp.maximum(a["rejected_lengths"], 1.0)
    return r_w, r_l


def _averaged_logps(name, beta, arrays):
    """lbar_w, lbar_l = l_theta / |y| (0 for an empty completion)."""
    a = _check(name, beta, arrays, _POLICY + _LENGTHS)
    lbar_w = a["policy_chosen_logps"] / jnp.maximum(a["chosen_lengths"], 1.0)  # l(y) / |y|
    lbar_l = a["policy_rejected_logps"] / jnp.maximum(a["rejected_lengths"], 1.0)
    return lbar_w, lbar_l


def pair_metrics(chosen_reward, rejected_reward) -> Metrics:
    """Reward metrics shared by every pairwise loss (stop-gradiented, float32).

    `reward_accuracy` is 1 where chosen > rejected, 0 where below, and 1/2 on an exact tie, so
    a policy equal to its reference (every implicit reward 0) scores chance, not 0 (TRL counts
    ties as wrong).
    """
    c = jax.lax.stop_gradient(_f32(chosen_reward))
    r = jax.lax.stop_gradient(_f32(rejected_reward))
    accuracy = jnp.where(c == r, 0.5, (c > r).astype(jnp.float32))
    return {"chosen_reward": c, "rejected_reward": r, "reward_margin": c - r,
            "reward_accuracy": accuracy}


def _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
            chosen_lengths, rejected_lengths):
    return dict(policy_chosen_logps=policy_chosen_logps,
                policy_rejected_logps=policy_rejected_logps,
                ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)


def sigmoid(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
            ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None, beta):
    """DPO (Rafailov et al. 2023): `-log sigma(beta h)`. Summed log-probs; lengths ignored."""
    args = _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, chosen_lengths, rejected_lengths)
    r_w, r_l = _log_ratios("dpo.sigmoid", beta, args)
    loss = jax.nn.softplus(-beta * (r_w - r_l))  # DPO eq. (7)
    return loss, pair_metrics(beta * r_w, beta * r_l)


def cdpo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
         ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None, beta,
         label_smoothing=0.0):
    """Conservative DPO: labels flipped with probability eps = `label_smoothing` in [0, 0.5).

    `(1-eps)(-log sigma(beta h)) + eps(-log sigma(-beta h))` (TRL `sigmoid` with label smoothing).
    """
    _checks.check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)
    args = _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, chosen_lengths, rejected_lengths)
    r_w, r_l = _log_ratios("dpo.cdpo", beta, args)
    z = beta * (r_w - r_l)
    eps = label_smoothing
    loss = (1 - eps) * jax.nn.softplus(-z) + eps * jax.nn.softplus(z)  # cDPO (Mitchell 2023)
    return loss, pair_metrics(beta * r_w, beta * r_l)


def robust(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
           ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None, beta,
           label_smoothing=0.0):
    """Robust DPO (Chowdhury et al. 2024): unbiased under label-flip rate eps in [0, 0.5).

    `[(1-eps)(-log sigma(beta h)) - eps(-log sigma(-beta h))] / (1 - 2 eps)`; eps = 0 is DPO.
    """
    _checks.check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)
    args = _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, chosen_lengths, rejected_lengths)
    r_w, r_l = _log_ratios("dpo.robust", beta, args)
    z = beta * (r_w - r_l)
    eps = label_smoothing
    # rDPO (Chowdhury et al. 2024): the unbiased estimate of the clean-label DPO loss
    loss = ((1 - eps) * jax.nn.softplus(-z) - eps * jax.nn.softplus(z)) / (1 - 2 * eps)
    return loss, pair_metrics(beta * r_w, beta * r_l)


def ipo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
        ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None, beta):
    """IPO on summed log-probs (the DPO reference code): `(h - 1/(2 beta))^2`; lengths ignored."""
    args = _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, chosen_lengths, rejected_lengths)
    r_w, r_l = _log_ratios("dpo.ipo", beta, args)
    loss = jnp.square(r_w - r_l - 1 / (2 * beta))  # IPO eq. (17), tau = beta
    return loss, pair_metrics(beta * r_w, beta * r_l)


def ipo_length_normalized(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
                          ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None,
                          beta):
    """IPO as TRL computes it: each log-ratio divided by its completion length.

    `(r_w/|y_w| - r_l/|y_l| - 1/(2 beta))^2`; reported rewards are `beta * r / |y|` (as in TRL).
    """
    args = _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, chosen_lengths, rejected_lengths)
    r_w, r_l = _log_ratios("dpo.ipo_length_normalized", beta, args, length_normalized=True)
    loss = jnp.square(r_w - r_l - 1 / (2 * beta))  # IPO eq. (17) on length-averaged log-ratios
    return loss, pair_metrics(beta * r_w, beta * r_l)


def hinge(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
          ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None, beta):
    """Hinge loss of SLiC / RSO on the DPO log-ratio: `relu(1 - beta h)`; lengths ignored."""
    args = _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, chosen_lengths, rejected_lengths)
    r_w, r_l = _log_ratios("dpo.hinge", beta, args)
    loss = jax.nn.relu(1 - beta * (r_w - r_l))  # RSO (Liu et al. 2023) hinge loss
    return loss, pair_metrics(beta * r_w, beta * r_l)


def reference_free(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
                   ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None, beta):
    """DPO with `l_ref = 0`: `-log sigma(beta (l_w - l_l))`; ref and lengths ignored.

    Reported rewards are `beta * l_theta(y)`.
    """
    args = _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, chosen_lengths, rejected_lengths)
    a = _check("dpo.reference_free", beta, args, _POLICY)
    l_w, l_l = a["policy_chosen_logps"], a["policy_rejected_logps"]
    loss = jax.nn.softplus(-beta * (l_w - l_l))  # DPO eq. (7) with pi_ref = 1
    return loss, pair_metrics(beta * l_w, beta * l_l)


def simpo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
          ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None, beta,
          gamma_beta_ratio=0.5):
    """SimPO (Meng et al. 2024): `-log sigma(beta (lbar_w - lbar_l) - gamma)`, no reference.

    Takes `gamma_beta_ratio` = gamma / beta as the official code and TRL do (default 0.5).
    Reported rewards are `beta * lbar_theta(y)`. `ref_*` are ignored.
    """
    args = _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, chosen_lengths, rejected_lengths)
    lbar_w, lbar_l = _averaged_logps("dpo.simpo", beta, args)
    loss = jax.nn.softplus(-beta * (lbar_w - lbar_l - gamma_beta_ratio))  # SimPO eq. (6)
    return loss, pair_metrics(beta * lbar_w, beta * lbar_l)


def log1mexp(x):
    """log(1 - exp(x)) for x <= 0, as log(-expm1(x)), with x clamped to <= -1e-20.

    The clamp keeps x = 0 (a certain completion) finite: value about -46, and the gradient,
    zero above the clamp, finite below it.
    """
    return jnp.log(-jnp.expm1(jnp.minimum(x, -_LOG1MEXP_GUARD)))


def orpo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
         ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None, beta):
    """ORPO (Hong et al. 2024): `NLL(y_w) - beta * log sigma(log odds ratio)`, no reference.

    `beta` is the paper's lambda (TRL's naming; paper default 0.1). NLL(y_w) = -lbar_w, the mean
    token NLL of the chosen completion. Reported rewards are `beta * lbar_theta(y)` (as in TRL).
    Extra metrics: `nll`, `log_odds_ratio`. `ref_*` are ignored.
    """
    args = _arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, chosen_lengths, rejected_lengths)
    lbar_w, lbar_l = _averaged_logps("dpo.orpo", beta, args)
    # ORPO eq. (4)-(5): log odds(y) = lbar - log(1 - exp(lbar)).
    log_odds_ratio = (lbar_w - lbar_l) - (log1mexp(lbar_w) - log1mexp(lbar_l))
    loss = -lbar_w + beta * jax.nn.softplus(-log_odds_ratio)  # ORPO eq. (6)-(7)
    metrics = pair_metrics(beta * lbar_w, beta * lbar_l)
    metrics["nll"] = jax.lax.stop_gradient(-lbar_w)
    metrics["log_odds_ratio"] = jax.lax.stop_gradient(log_odds_ratio)
    return loss, metrics
