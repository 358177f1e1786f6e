"""TRL's other pairwise losses, on `pair.PairLogps` with the DPO family's keyword signature:

    loss_B, metrics = fn(policy_chosen_logps=..., policy_rejected_logps=...,
                         ref_chosen_logps=..., ref_rejected_logps=...,
                         chosen_lengths=..., rejected_lengths=..., beta=..., **variant_hparams)

Each is TRL 1.16's `DPOTrainer` loss of the same `loss_type`, registered as `dpo.<loss_type>`
and checked against TRL's own `_compute_loss` (tests/losses/test_trl_pairwise.py). Inputs are
[B] summed completion log-probs and completion token counts, outputs `(loss [B], metrics)` in
float32 (float64 if given float64). Notation: r_w, r_l = l_theta - l_ref; u = beta r (the
implicit rewards u_w, u_l); z = u_w - u_l = beta h; sp = softplus, -log sigma(x) = sp(-x).

  nca_pair      sp(-u_w) + 1/2 sp(u_w) + 1/2 sp(u_l)           NCA, arXiv 2402.05369
  bco_pair      sp(delta - u_w) + sp(u_l - delta)              BCO, arXiv 2404.04656
  exo_pair      KL(sigma(+-z) || (1 - eps, eps))               EXO eq. (16), arXiv 2402.00856
  apo_zero      sigma(-u_w) + sigma(u_l)                       APO eq. (7), arXiv 2408.06266
  apo_down      sigma(u_w) + sigma(-z)                         APO eq. (8), arXiv 2408.06266
  sigmoid_norm  sp(-beta (r_w/|y_w| - r_l/|y_l|))              Tulu 3 eq. (6), arXiv 2411.15124
  discopop      sp(-z) sigma(-z/tau) + e^-z sigma(z/tau)       DiscoPOP eq. (5), arXiv 2406.08414

Metrics: `dpo.pair_metrics(beta r_w, beta r_l)` (TRL's rewards/*); `sigmoid_norm` reports
`beta r / |y|`, the rewards its loss compares (as `dpo.ipo_length_normalized`; TRL logs beta r).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses import _checks
from jaxalign.losses.pair import LENGTHS, REF, PairLogps, pair_loss, pair_metrics


@pair_loss("dpo.nca_pair", uses=REF)
def nca_pair(p: PairLogps, *, beta):
    """NCA on a pair (Chen et al. 2024): raises u_w in absolute terms, not only u_w - u_l.

    `-log sigma(u_w) - 1/2 log sigma(-u_w) - 1/2 log sigma(-u_l)`; lengths ignored.
    """
    u_w, u_l = beta * p.r_w, beta * p.r_l
    # NCA (arXiv 2402.05369, Sec. 4) for K = 2, as in thu-ml/Noise-Contrastive-Alignment
    loss = jax.nn.softplus(-u_w) + 0.5 * jax.nn.softplus(u_w) + 0.5 * jax.nn.softplus(u_l)
    return loss, pair_metrics(u_w, u_l)


@pair_loss("dpo.bco_pair", uses=REF)
def bco_pair(p: PairLogps, *, beta, delta=0.0):
    """BCO on a pair (Jung et al. 2024): a binary classifier with logit u - delta.

    `-log sigma(u_w - delta) - log sigma(-(u_l - delta))`; lengths ignored. `delta` is the
    paper's reward shift, a scalar or [B] array that the caller holds fixed (no gradient flows
    into it). TRL 1.16 uses delta = 0 (the default, the one TRL parity holds for). The paper and
    earlier TRL releases shift by a running mean, across steps and processes, of the detached
    batch-mean reward mean(u_w, u_l), updated with each batch before its loss: state a pure
    per-example loss cannot keep, so a caller that wants it keeps that mean and passes it here.
    """
    u_w, u_l = beta * p.r_w, beta * p.r_l
    delta = jax.lax.stop_gradient(delta)
    # BCO (arXiv 2404.04656): Theorem 1's BCE bound, with the reward shift delta
    loss = jax.nn.softplus(delta - u_w) + jax.nn.softplus(u_l - delta)
    return loss, pair_metrics(u_w, u_l)


@pair_loss("dpo.exo_pair", uses=REF)
def exo_pair(p: PairLogps, *, beta, label_smoothing=1e-3):
    """EXO on a pair (Ji et al. 2024): reverse KL from the model's pair distribution.

    `KL(p_theta || p_label)` with p_theta = (sigma(z), sigma(-z)) and p_label = (1 - eps, eps),
    eps = `label_smoothing` in (0, 0.5) (paper and TRL's recommended 1e-3; TRL rejects 0, where
    log eps is -inf). Lengths ignored.
    """
    eps = _checks.static_scalar(label_smoothing)
    if eps is not None and not 0.0 < eps < 0.5:
        raise ValueError(
            f"label_smoothing (EXO's eps) must be in (0, 0.5), got {label_smoothing!r}.")
    u_w, u_l = beta * p.r_w, beta * p.r_l
    z = u_w - u_l
    eps = jnp.asarray(label_smoothing, z.dtype)
    log_q_w, log_q_l = -jax.nn.softplus(-z), -jax.nn.softplus(z)  # log sigma(+-z)
    # EXO eq. (16) with K = 2: sum_i q_i (log q_i - log p_i)
    loss = (jnp.exp(log_q_w) * (log_q_w - jnp.log1p(-eps))
            + jnp.exp(log_q_l) * (log_q_l - jnp.log(eps)))
    return loss, pair_metrics(u_w, u_l)


@pair_loss("dpo.apo_zero", uses=REF)
def apo_zero(p: PairLogps, *, beta):
    """APO-zero (D'Oosterlinck et al. 2024): raise u_w, lower u_l, each anchored at 0.

    `(1 - sigma(u_w)) + sigma(u_l)`, for chosen outputs better than the model's. Lengths ignored.
    """
    u_w, u_l = beta * p.r_w, beta * p.r_l
    loss = jax.nn.sigmoid(-u_w) + jax.nn.sigmoid(u_l)  # APO eq. (7); 1 - sigma(x) = sigma(-x)
    return loss, pair_metrics(u_w, u_l)


@pair_loss("dpo.apo_down", uses=REF)
def apo_down(p: PairLogps, *, beta):
    """APO-down (D'Oosterlinck et al. 2024): lower u_w, and u_l further below it.

    `sigma(u_w) + (1 - sigma(u_w - u_l))`, for chosen outputs worse than the model's. Lengths
    ignored.
    """
    u_w, u_l = beta * p.r_w, beta * p.r_l
    loss = jax.nn.sigmoid(u_w) + jax.nn.sigmoid(u_l - u_w)  # APO eq. (8)
    return loss, pair_metrics(u_w, u_l)


@pair_loss("dpo.sigmoid_norm", uses=REF + LENGTHS)
def sigmoid_norm(p: PairLogps, *, beta):
    """Length-normalised DPO (Tulu 3, Lambert et al. 2024), TRL's `sigmoid_norm`.

    `-log sigma(beta (r_w/|y_w| - r_l/|y_l|))`: each log-ratio divided by its completion's token
    count (at least 1), as `dpo.ipo_length_normalized` does. Reported rewards are `beta r/|y|`.
    """
    u_w, u_l = beta * p.rbar_w, beta * p.rbar_l
    loss = jax.nn.softplus(-(u_w - u_l))  # Tulu 3 eq. (6) (arXiv 2411.15124, Sec. 5.1.2)
    return loss, pair_metrics(u_w, u_l)


@pair_loss("dpo.discopop", uses=REF)
def discopop(p: PairLogps, *, beta, tau=0.05):
    """DiscoPOP (Lu et al. 2024): the log-ratio modulated loss, a blend of logistic and exp.

    `(1 - sigma(z/tau)) (-log sigma(z)) + sigma(z/tau) exp(-z)`, z = beta h, `tau` = TRL's
    `discopop_tau` (paper default 0.05); lengths ignored. The exp term is computed as
    `exp(-z - softplus(-z/tau))`, which overflows only where the value does (never for tau <= 1):
    TRL's `exp(-z) * sigmoid(z/tau)` is inf * 0 = nan once exp(-z) overflows (z < -88.7 in
    float32, z < -709.8 in float64), where this returns the true value (about -z for tau < 1).
    Elsewhere the two agree (tests/losses/test_trl_pairwise.py).
    """
    _checks.check_positive("tau", tau)
    u_w, u_l = beta * p.r_w, beta * p.r_l
    z = u_w - u_l
    # DiscoPOP eq. (5); 1 - sigma(x) = sigma(-x), sigma(z/tau) e^-z = exp(-z + log sigma(z/tau))
    loss = (jax.nn.sigmoid(-z / tau) * jax.nn.softplus(-z)
            + jnp.exp(-z - jax.nn.softplus(-z / tau)))
    return loss, pair_metrics(u_w, u_l)
