"""CGPO: Constrained Generative Policy Optimization (Xu et al. 2024, arXiv 2409.20370).

A prompt s has K sampled responses a_1..a_K and a baseline response a_bar. A mixture of judges
gives pass/fail verdicts [N, K, J]; a response violates if ANY judge fails.

Rewards (pure functions):
  calibrated_reward:   R_calib(s, a) = sigma(r(s, a) - r(s, a_bar))
  constrained_reward:  R_cr = R_calib * 1[all judges pass]
Selection rules (array functions with masks; jit-able, no loops over samples):
  codpo_select:  a+ = highest reward among passing, a- = lowest reward among violating
                 (all pass: lowest reward among the others); no passing response: weight 0.
  crraft_select: keep passing samples with log(pi/pi_ref) <= KL_max, a* = argmax reward;
                 none kept: a_bar if it passes, else weight 0.
Losses, `(per_example_loss, metrics)`; the caller reduces (mean over weight/mask > 0):
  crpg   [N, K]: -sg(R~_i - mean_j R~_j) log pi(a_i|s),  R~ = max(1 - log_ratio/KL_max, 0) R_cr
  codpo  [N]:    -w [log sigma(beta h) + (lambda/|a+|) log pi(a+|s)]
  crraft [N]:    -w sg(R_calib(s, a*)) log pi(a*|s)
Ties in every argmax/argmin go to the first index. Rows with weight 0 contribute exactly 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxalign.losses import _checks
from jaxalign.losses.dpo import pair_metrics

_sg = jax.lax.stop_gradient


def all_judges_pass(*, judge_verdicts_xJ: Bool[Array, "... J"]) -> Bool[Array, "..."]:
    """True where every judge passes (verdicts: True/1 = pass), reduced over the last axis."""
    return jnp.all(jnp.asarray(judge_verdicts_xJ).astype(bool), axis=-1)


def calibrated_reward(*, rewards: Float[Array, "N ..."],
                      baseline_rewards: Float[Array, "N"]) -> Float[Array, "N ..."]:
    """R_calib = sigma(r(s, a) - r(s, a_bar)), float32; [N] baselines broadcast over [N, K]."""
    r = _checks.at_least_f32(rewards)
    r_bar = _checks.at_least_f32(baseline_rewards)
    r_bar = r_bar.reshape(r_bar.shape + (1,) * (r.ndim - r_bar.ndim))
    return jax.nn.sigmoid(r - r_bar)  # CGPO calibrated reward


def constrained_reward(*, calibrated_rewards: Float[Array, "..."],
                       passes: Bool[Array, "..."]) -> Float[Array, "..."]:
    """R_cr = R_calib * 1[all judges pass]."""
    _checks.check_same_shape(calibrated_rewards=calibrated_rewards, passes=passes)
    return jnp.where(jnp.asarray(passes).astype(bool), calibrated_rewards, 0.0)


def _passes_and_mask(rewards_NxK, passes_NxK, judge_verdicts_NxKxJ, mask_NxK):
    _checks.check_rank("rewards_NxK", rewards_NxK, 2)
    _checks.check_exactly_one(passes_NxK=passes_NxK, judge_verdicts_NxKxJ=judge_verdicts_NxKxJ)
    if judge_verdicts_NxKxJ is not None:
        _checks.check_rank("judge_verdicts_NxKxJ", judge_verdicts_NxKxJ, 3)
        passes_NxK = all_judges_pass(judge_verdicts_xJ=judge_verdicts_NxKxJ)
    if mask_NxK is None:
        mask_NxK = jnp.ones(jnp.shape(rewards_NxK), bool)
    _checks.check_same_shape(rewards_NxK=rewards_NxK, passes_NxK=passes_NxK, mask_NxK=mask_NxK)
    return jnp.asarray(passes_NxK).astype(bool), jnp.asarray(mask_NxK).astype(bool)


def _argmax_where(values_NxK, where_NxK):
    return jnp.argmax(jnp.where(where_NxK, values_NxK, -jnp.inf), axis=-1).astype(jnp.int32)


def _argmin_where(values_NxK, where_NxK):
    return jnp.argmin(jnp.where(where_NxK, values_NxK, jnp.inf), axis=-1).astype(jnp.int32)


class PairSelection(NamedTuple):
    chosen_index: Int[Array, "N"]  # a+
    rejected_index: Int[Array, "N"]  # a-
    weight: Float[Array, "N"]  # 1.0 if the prompt yields a pair, else 0.0 (skipped)


def codpo_select(*, rewards_NxK, passes_NxK=None, judge_verdicts_NxKxJ=None,
                 mask_NxK=None) -> PairSelection:
    """CODPO pair per prompt from K responses (give `passes_NxK` or `judge_verdicts_NxKxJ`).

    a+ = highest reward among passing responses; a- = lowest reward among violating ones or,
    when every response passes, the lowest reward among the responses other than a+. Weight 0
    when no response passes or no a- exists (a single valid response). `mask_NxK` marks valid
    responses (default all). Ties: first index.
    """
    passes, valid = _passes_and_mask(rewards_NxK, passes_NxK, judge_verdicts_NxKxJ, mask_NxK)
    rewards = _checks.at_least_f32(rewards_NxK)
    passing, violating = passes & valid, ~passes & valid
    plus_N = _argmax_where(rewards, passing)  # CGPO eq. (14): a+
    others_NxK = valid & (jnp.arange(rewards.shape[-1]) != plus_N[:, None])
    candidates_NxK = jnp.where(violating.any(-1, keepdims=True), violating, others_NxK)
    minus_N = _argmin_where(rewards, candidates_NxK)  # CGPO eq. (14): a-
    weight_N = passing.any(-1) & candidates_NxK.any(-1)
    return PairSelection(plus_N, minus_N, weight_N.astype(jnp.float32))


class SampleSelection(NamedTuple):
    index: Int[Array, "N"]  # a* among the K samples (0 where use_baseline or weight 0)
    use_baseline: Bool[Array, "N"]  # a* = a_bar
    weight: Float[Array, "N"]  # 1.0 if the prompt has an a*, else 0.0 (skipped)


def crraft_select(*, rewards_NxK, log_ratios_NxK, kl_max, baseline_passes_N, passes_NxK=None,
                  judge_verdicts_NxKxJ=None, mask_NxK=None) -> SampleSelection:
    """CRRAFT: a* = argmax reward among samples that pass and have log(pi/pi_ref) <= kl_max.

    `log_ratios_NxK` are sequence log-ratios log pi_w(a|s) - log pi_ref(a|s). If no sample is
    kept, a* = a_bar when `baseline_passes_N`, else the prompt is skipped (weight 0).
    """
    _checks.check_positive("kl_max", kl_max)
    passes, valid = _passes_and_mask(rewards_NxK, passes_NxK, judge_verdicts_NxKxJ, mask_NxK)
    _checks.check_same_shape(rewards_NxK=rewards_NxK, log_ratios_NxK=log_ratios_NxK)
    if jnp.shape(baseline_passes_N) != jnp.shape(rewards_NxK)[:1]:
        raise ValueError(f"baseline_passes_N {list(jnp.shape(baseline_passes_N))} must be "
                         f"[N] = {list(jnp.shape(rewards_NxK)[:1])}.")
    kept_NxK = passes & valid & (jnp.asarray(log_ratios_NxK) <= kl_max)  # CGPO eq. (17)
    any_kept_N = kept_NxK.any(-1)
    index_N = jnp.where(any_kept_N, _argmax_where(rewards_NxK, kept_NxK), 0)  # CGPO eq. (17)
    use_baseline_N = ~any_kept_N & jnp.asarray(baseline_passes_N).astype(bool)
    weight_N = (any_kept_N | use_baseline_N).astype(jnp.float32)
    return SampleSelection(index_N.astype(jnp.int32), use_baseline_N, weight_N)


def crpg(*, policy_logps_NxK, ref_logps_NxK, constrained_rewards_NxK, kl_max, mask_NxK=None):
    """CRPG surrogate per response, [N, K]; d(sum loss)/n = -(1/n) sum_i grad log pi (R~_i - mean).

    The KL-clipped reward R~ and its advantage over the mean of the same prompt's valid
    responses are stop-gradiented: only `policy_logps_NxK` receives gradient. Reduce with
    `loss.sum() / mask.sum()`. Metrics [N, K]: `kl_clipped_reward`, `advantage`, `log_ratio`,
    `weight` (the mask as float32).
    """
    _checks.check_positive("kl_max", kl_max)
    _checks.check_rank("policy_logps_NxK", policy_logps_NxK, 2)
    if mask_NxK is None:
        mask_NxK = jnp.ones(jnp.shape(policy_logps_NxK), bool)
    _checks.check_same_shape(policy_logps_NxK=policy_logps_NxK, ref_logps_NxK=ref_logps_NxK,
                             constrained_rewards_NxK=constrained_rewards_NxK, mask_NxK=mask_NxK)
    mask = jnp.asarray(mask_NxK).astype(bool)
    logp = _checks.at_least_f32(policy_logps_NxK)
    log_ratio = _sg(logp - _checks.at_least_f32(ref_logps_NxK))
    r_cr = _checks.at_least_f32(constrained_rewards_NxK)
    r_tilde = jnp.where(mask, jnp.maximum(1 - log_ratio / kl_max, 0.0) * r_cr, 0.0)  # eq. (11)
    count_Nx1 = jnp.maximum(mask.sum(-1, keepdims=True), 1)
    advantage = _sg(jnp.where(mask, r_tilde - r_tilde.sum(-1, keepdims=True) / count_Nx1, 0.0))
    loss = jnp.where(mask, -advantage * logp, 0.0)  # CGPO eq. (12)
    metrics = {"kl_clipped_reward": _sg(r_tilde), "advantage": advantage,
               "log_ratio": jnp.where(mask, log_ratio, 0.0), "weight": mask.astype(jnp.float32)}
    return loss, metrics


def codpo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
          chosen_lengths, beta, lambda_, weight=None, rejected_lengths=None):
    """CODPO on the selected pairs, [N]: `-w [log sigma(beta h) + (lambda/|a+|) log pi(a+|s)]`.

    `weight` [N] from `codpo_select` (default 1); rows with weight 0 give exactly 0. Metrics:
    the DPO-family reward metrics plus `weight`.
    """
    _checks.check_positive("beta", beta)
    arrays = dict(policy_chosen_logps=policy_chosen_logps,
                  policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                  ref_rejected_logps=ref_rejected_logps, chosen_lengths=chosen_lengths)
    if weight is not None:
        arrays["weight"] = weight
    _checks.check_same_shape(**arrays)
    a = {k: _checks.at_least_f32(v) for k, v in arrays.items()}
    w = a.get("weight", jnp.ones_like(a["policy_chosen_logps"]))
    r_w = a["policy_chosen_logps"] - a["ref_chosen_logps"]
    r_l = a["policy_rejected_logps"] - a["ref_rejected_logps"]
    nll_term = lambda_ * a["policy_chosen_logps"] / jnp.maximum(a["chosen_lengths"], 1.0)
    loss = jax.nn.softplus(-beta * (r_w - r_l)) - nll_term  # CGPO eq. (14)
    metrics = pair_metrics(beta * r_w, beta * r_l)
    metrics["weight"] = w
    return jnp.where(w > 0, w * loss, 0.0), metrics


def crraft(*, policy_logps, calibrated_rewards, weight=None):
    """CRRAFT update on the selected a*, [N]: `-w * sg(R_calib(s, a*)) * log pi(a*|s)`.

    `policy_logps` = log pi_w(a*|s) (summed), `calibrated_rewards` = R_calib(s, a*), `weight`
    from `crraft_select` (default 1). Metrics: `calibrated_reward`, `weight`.
    """
    arrays = dict(policy_logps=policy_logps, calibrated_rewards=calibrated_rewards)
    if weight is not None:
        arrays["weight"] = weight
    _checks.check_same_shape(**arrays)
    logp = _checks.at_least_f32(policy_logps)
    r_calib = _sg(_checks.at_least_f32(calibrated_rewards))
    w = jnp.ones_like(logp) if weight is None else _checks.at_least_f32(weight)
    loss = jnp.where(w > 0, -w * r_calib * logp, 0.0)  # CGPO eq. (18)
    return loss, {"calibrated_reward": r_calib, "weight": w}
