"""SPPO: Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675; uclaml/SPPO).

Losses regress the log-ratio r(y) = l_theta(y) - l_ref(y) (summed log-probs; the reference is
the previous iterate pi_t) onto a target set by a win rate, scaled by the paper's eta:

  sppo:        1/2 [(r_w - eta (P_w - 1/2))^2 + (r_l - eta (P_l - 1/2))^2]
               P_w, P_l = win rates of y_w, y_l against all K samples of pi_t (diagonal 1/2).
  sppo_single: 1/2 [(r_w - eta (P - 1/2))^2 + (r_l + eta (P - 1/2))^2],  P = P(y_w > y_l).
  sppo_hard:   (r_w - eta/2)^2 + (r_l + eta/2)^2  (TRL's `sppo_hard`: hard labels P_w=1, P_l=0).

eta is given as `eta` (the paper's symbol; official 1000) or, as configs and TRL do, as
`beta` = 1/eta (official 0.001); giving both is a ValueError. All three share the DPO-family
signature plus the win-rate inputs (ignored by those that do not use them), return
`(per_example_loss [B], metrics)` with the DPO-family reward metrics (`r / eta` = `beta * r`),
and compute in float32: with eta = 1000 the loss starts ~1e5.

`win_rates_from_scores` / `win_rates_from_matrix` build (y_w, y_l, P_w, P_l, P(y_w > y_l)) from
K candidates per prompt exactly as the official `scripts/compute_prob.py` does;
`bt_preference_matrix` is the K x K matrix sigma(s_i - s_j) of the first.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxalign.losses import _checks
from jaxalign.losses.pair import REF, PairLogps, pair_loss, pair_metrics

WIN_RATES = ("chosen_win_rate", "rejected_win_rate", "pair_win_rate")


def _eta(beta):
    return 1.0 / beta  # SPPO: eta = 1/beta


def _sppo_loss(name, arrays):
    """`pair_loss` for SPPO: eta, or beta = 1/eta; accepts every win-rate input."""
    return pair_loss(name, uses=REF, arrays=arrays,
                     ignores=tuple(k for k in WIN_RATES if k not in arrays),
                     scale="eta", old="beta", from_old=_eta)


@_sppo_loss("sppo.sppo", arrays=("chosen_win_rate", "rejected_win_rate"))
def sppo(p: PairLogps, *, chosen_win_rate, rejected_win_rate, eta):
    """SPPO with per-sample win rates P_w = `chosen_win_rate`, P_l = `rejected_win_rate` [B]."""
    loss_w = jnp.square(p.r_w - eta * (chosen_win_rate - 0.5))  # SPPO eq. (3.6)
    loss_l = jnp.square(p.r_l - eta * (rejected_win_rate - 0.5))  # SPPO eq. (3.6)
    return 0.5 * (loss_w + loss_l), pair_metrics(p.r_w * (1 / eta), p.r_l * (1 / eta))


@_sppo_loss("sppo.single", arrays=("pair_win_rate",))
def sppo_single(p: PairLogps, *, pair_win_rate, eta):
    """SPPO with the pairwise P = P(y_w > y_l) = `pair_win_rate` [B]: targets +-eta (P - 1/2)."""
    target = eta * (pair_win_rate - 0.5)
    # uclaml/SPPO `sppo_single`: SPPO eq. (3.6) with P_w = P, P_l = 1 - P
    loss = 0.5 * (jnp.square(p.r_w - target) + jnp.square(p.r_l + target))
    return loss, pair_metrics(p.r_w * (1 / eta), p.r_l * (1 / eta))


@_sppo_loss("sppo.hard", arrays=())
def sppo_hard(p: PairLogps, *, eta):
    """TRL's `sppo_hard`: `(r_w - eta/2)^2 + (r_l + eta/2)^2` (no 1/2 factor), eta = 1/beta."""
    # TRL `sppo_hard`: SPPO eq. (3.6) with P_w = 1, P_l = 0, without the 1/2.
    loss = jnp.square(p.r_w - 0.5 * eta) + jnp.square(p.r_l + 0.5 * eta)
    return loss, pair_metrics(p.r_w * (1 / eta), p.r_l * (1 / eta))


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

    P = `bt_preference_matrix(scores_NxK)`, y_w = argmax s, y_l = argmin s (first index on
    ties). One prompt per row; float32.
    """
    return _select(bt_preference_matrix(scores_NxK), _checks.at_least_f32(scores_NxK))


def bt_preference_matrix(scores_NxK: Float[Array, "N K"]) -> Float[Array, "N K K"]:
    """P[n, i, j] = sigma(s_i - s_j) (Bradley-Terry link, as SPPO's PairRM scores); P_ii = 1/2."""
    _checks.check_rank("scores_NxK", scores_NxK, 2)
    s = _checks.at_least_f32(scores_NxK)
    P = jax.nn.sigmoid(s[:, :, None] - s[:, None, :])  # SPPO: P(y_i > y_j) = sigma(s_i - s_j)
    return jnp.where(jnp.eye(s.shape[-1], dtype=bool), 0.5, P)


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
