"""SPPO: Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675; uclaml/SPPO).

Losses regress the log-ratio r(y) = l_theta(y) - l_ref(y) (summed log-probs; the reference is
the previous iterate pi_t) onto a target set by a win rate, with eta = 1/beta:

  sppo:        1/2 [(r_w - eta (P_w - 1/2))^2 + (r_l - eta (P_l - 1/2))^2]
               P_w, P_l = win rates of y_w, y_l against all K samples of pi_t (diagonal 1/2).
  sppo_single: 1/2 [(r_w - eta (P - 1/2))^2 + (r_l + eta (P - 1/2))^2],  P = P(y_w > y_l).
  sppo_hard:   (r_w - eta/2)^2 + (r_l + eta/2)^2  (TRL's `sppo_hard`: hard labels P_w=1, P_l=0).

All three share the DPO-family signature plus the win-rate inputs (ignored by those that do
not use them), return `(per_example_loss [B], metrics)` with the DPO-family reward metrics
(`beta * r`), and compute in float32: with the official eta = 1000 the loss starts ~1e5.

`win_rates_from_scores` / `win_rates_from_matrix` build (y_w, y_l, P_w, P_l, P(y_w > y_l)) from
K candidates per prompt exactly as the official `scripts/compute_prob.py` does.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxalign.losses import _checks
from jaxalign.losses.dpo import pair_metrics


def _log_ratios(name, beta, **arrays):
    _checks.check_positive("beta", beta)
    _checks.check_required(name, **arrays)
    _checks.check_same_shape(**arrays)
    a = {k: _checks.at_least_f32(v) for k, v in arrays.items()}
    r_w = a["policy_chosen_logps"] - a["ref_chosen_logps"]
    r_l = a["policy_rejected_logps"] - a["ref_rejected_logps"]
    return r_w, r_l, a


def sppo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
         chosen_win_rate, rejected_win_rate, pair_win_rate=None, chosen_lengths=None,
         rejected_lengths=None, beta):
    """SPPO with per-sample win rates P_w = `chosen_win_rate`, P_l = `rejected_win_rate` [B]."""
    r_w, r_l, a = _log_ratios(
        "sppo.sppo", beta, policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps, chosen_win_rate=chosen_win_rate,
        rejected_win_rate=rejected_win_rate)
    eta = 1.0 / beta
    loss_w = jnp.square(r_w - eta * (a["chosen_win_rate"] - 0.5))  # SPPO eq. (3.6)
    loss_l = jnp.square(r_l - eta * (a["rejected_win_rate"] - 0.5))  # SPPO eq. (3.6)
    return 0.5 * (loss_w + loss_l), pair_metrics(beta * r_w, beta * r_l)


def sppo_single(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                ref_rejected_logps, pair_win_rate, chosen_win_rate=None, rejected_win_rate=None,
                chosen_lengths=None, rejected_lengths=None, beta):
    """SPPO with the pairwise P = P(y_w > y_l) = `pair_win_rate` [B]: targets +-eta (P - 1/2)."""
    r_w, r_l, a = _log_ratios(
        "sppo.single", beta, policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps, pair_win_rate=pair_win_rate)
    target = (1.0 / beta) * (a["pair_win_rate"] - 0.5)
    loss = 0.5 * (jnp.square(r_w - target) + jnp.square(r_l + target))  # uclaml `sppo_single`
    return loss, pair_metrics(beta * r_w, beta * r_l)


def sppo_hard(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
              ref_rejected_logps, chosen_win_rate=None, rejected_win_rate=None,
              pair_win_rate=None, chosen_lengths=None, rejected_lengths=None, beta):
    """TRL's `sppo_hard`: `(r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2` (no 1/2 factor)."""
    r_w, r_l, _ = _log_ratios(
        "sppo.hard", beta, policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps)
    half_eta = 0.5 / beta
    # TRL `sppo_hard`: SPPO eq. (3.6) with P_w = 1, P_l = 0, without the 1/2.
    loss = jnp.square(r_w - half_eta) + jnp.square(r_l + half_eta)
    return loss, pair_metrics(beta * r_w, beta * r_l)


class WinRates(NamedTuple):
    """Chosen/rejected candidates of each prompt and their win rates, all [N]."""

    chosen_index: Int[Array, "N"]  # y_w
    rejected_index: Int[Array, "N"]  # y_l
    chosen_win_rate: Float[Array, "N"]  # P_w = mean_j P[w, j], j over all K (P[w, w] = 1/2)
    rejected_win_rate: Float[Array, "N"]  # P_l = mean_j P[l, j]
    pair_win_rate: Float[Array, "N"]  # P[w, l] = P(y_w > y_l), for `sppo_single`


def _select(prefs_NxKxK, rank_by_NxK):
    """First-index argmax/argmin of `rank_by`; win rates are row means including the diagonal."""
    row_mean_NxK = prefs_NxKxK.mean(-1)  # SPPO: P(y > pi_t) estimated on the K samples
    w_N = jnp.argmax(rank_by_NxK, axis=-1)
    l_N = jnp.argmin(rank_by_NxK, axis=-1)
    take = lambda v_NxK, i_N: jnp.take_along_axis(v_NxK, i_N[:, None], axis=-1)[:, 0]
    pair_N = prefs_NxKxK[jnp.arange(w_N.shape[0]), w_N, l_N]  # P(y_w > y_l)
    return WinRates(w_N.astype(jnp.int32), l_N.astype(jnp.int32), take(row_mean_NxK, w_N),
                    take(row_mean_NxK, l_N), pair_N)


def win_rates_from_scores(*, scores_NxK: Float[Array, "N K"]) -> WinRates:
    """Bradley-Terry link on preference-model scores (PairRM in the official code).

    P[i, j] = sigma(s_i - s_j) (so P[i, i] = 1/2), y_w = argmax s, y_l = argmin s (first index
    on ties). One prompt per row; float32.
    """
    _checks.check_rank("scores_NxK", scores_NxK, 2)
    s_NxK = _checks.at_least_f32(scores_NxK)
    prefs_NxKxK = jax.nn.sigmoid(s_NxK[:, :, None] - s_NxK[:, None, :])
    return _select(prefs_NxKxK, s_NxK)


def win_rates_from_matrix(*, preferences_NxKxK: Float[Array, "N K K"]) -> WinRates:
    """From a preference matrix P[i, j] = P(y_i > y_j) per prompt (possibly intransitive).

    The diagonal is set to 1/2. y_w / y_l = argmax / argmin of the row-mean win rate (first
    index on ties).
    """
    _checks.check_rank("preferences_NxKxK", preferences_NxKxK, 3)
    K = preferences_NxKxK.shape[-1]
    if preferences_NxKxK.shape[-2] != K:
        raise ValueError(
            f"preferences_NxKxK must be square per prompt, got shape "
            f"{list(preferences_NxKxK.shape)}.")
    prefs_NxKxK = _checks.at_least_f32(preferences_NxKxK)
    prefs_NxKxK = jnp.where(jnp.eye(K, dtype=bool), 0.5, prefs_NxKxK)
    return _select(prefs_NxKxK, prefs_NxKxK.mean(-1))
