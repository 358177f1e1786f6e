"""CGPO's tasks and the per-task update rules (CRPG, CODPO, CRRAFT, and RLOO as the
unconstrained baseline), as functions of one task's rollout.

A rule maps (log pi_w of the K samples [P, K], log pi_w of the baseline a_bar [P], the rollout,
the task) to (the task's loss, a scalar, mean over its units; scalar metrics). The loop turns
it into per-row coefficients `c = -d loss / d log pi` (`coefficients`): the gradient of the
loss at the weights that sampled the rollout is then `-sum_i c_i grad log pi(y_i | x_i)`, exactly,
for every rule, the pair loss of CODPO included (its gradient at a point is linear in the
log-probs' gradients). CGPO takes one gradient step per rollout at those weights, so the loop
trains on `-sum_i c_i log pi(y_i | x_i)` (`objectives.policy_gradient_objective`, no clip).

Rules pick by name from `RULES`; each is the paper's equation through `jaxalign.losses.cgpo`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import losses
from jaxalign.losses import cgpo as L


@dataclasses.dataclass(frozen=True)
class CGPOTask:
    """One CGPO task: a disjoint prompt set with its reward, judges and optimizer (Alg. 2).

    prompts: rows {"id", "prompt_tokens", "prompt" (text, for the judges), "metadata"?,
      "baseline_tokens"? (a_bar's completion tokens, with baseline="data")}.
    score: records (`online.rollout_records`) -> {"reward": [N], other columns (logged)}.
    judges: `jaxalign.reward.Judge`s (names unique); a response violates if any fails.
    """

    name: str
    prompts: Sequence[dict]
    score: Callable[[list[dict]], dict]
    judges: Sequence = ()
    optimizer: str = "crpg"  # a key of RULES
    samples: int = 4  # K
    prompts_per_step: int = 8
    kl_max: float = 10.0  # CRPG eq. (11), CRRAFT eq. (17)
    rho: float = 1.0  # the task's weight in the update (normalised over tasks)
    beta: float = 0.1  # CODPO
    lambda_: float = 5.0  # CODPO's NLL weight (TRL PR #2190's default; the paper gives none)
    kl_coef: float = 0.05  # RLOO's KL folded into the reward
    baseline: str = "reference"  # a_bar: "reference" (one sample, drawn once) or "data"

    def check(self) -> None:
        where = f"CGPO task {self.name!r}"
        if self.optimizer not in RULES:
            raise ValueError(f"{where}: optimizer {self.optimizer!r} is not one of "
                             f"{sorted(RULES)}")
        if not self.prompts:
            raise ValueError(f"{where} has no prompts")
        low = 1 if self.optimizer == "crraft" else 2
        for name, v, lo in (("samples", self.samples, low),
                            ("prompts_per_step", self.prompts_per_step, 1)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{where}: {name} must be an integer >= {lo} for "
                                 f"{self.optimizer}, got {v!r}")
        for name in ("kl_max", "rho", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"{where}: {name} must be > 0, got {v!r}")
        if not (self.lambda_ >= 0 and self.kl_coef >= 0):
            raise ValueError(f"{where}: lambda_ and kl_coef must be >= 0, got "
                             f"{self.lambda_!r}, {self.kl_coef!r}")
        if self.baseline not in ("reference", "data"):
            raise ValueError(f"{where}: baseline must be 'reference' or 'data', got "
                             f"{self.baseline!r}")
        names = [getattr(j, "name", None) for j in self.judges]
        if len(set(names)) != len(names) or None in names:
            raise ValueError(f"{where}: judges need distinct names, got {names}")
        ids = [str(r["id"]) for r in self.prompts]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"{where}: prompt id {dup!r} appears more than once")
        if self.baseline == "data":
            bad = [r["id"] for r in self.prompts if not r.get("baseline_tokens")]
            if bad:
                raise ValueError(f"{where}: baseline='data' but prompt id {bad[0]!r} has no "
                                 f"baseline_tokens ({len(bad)} rows)")


def check_tasks(tasks: Sequence[CGPOTask]) -> None:
    """Every task valid, names distinct, prompt sets disjoint (by id and by prompt tokens)."""
    if not tasks:
        raise ValueError("CGPO needs at least one task")
    seen_ids: dict[str, str] = {}
    seen_tokens: dict[tuple, str] = {}
    for t in tasks:
        t.check()
        if sum(u.name == t.name for u in tasks) > 1:
            raise ValueError(f"CGPO task name {t.name!r} is used twice")
        for r in t.prompts:
            for key, seen, what in ((str(r["id"]), seen_ids, "prompt id"),
                                    (tuple(r["prompt_tokens"]), seen_tokens, "prompt")):
                if seen.get(key, t.name) != t.name:
                    shown = r["id"] if what == "prompt" else key
                    raise ValueError(f"{what} {shown!r} of task {t.name!r} is also in task "
                                     f"{seen[key]!r}: CGPO's task prompt sets must be disjoint")
                seen[key] = t.name


class Rollout(NamedTuple):
    """One task's step, as arrays (P prompts, K samples)."""

    rewards: np.ndarray  # [P, K] the task's reward r(s, a)
    baseline_rewards: np.ndarray  # [P] r(s, a_bar)
    passes: np.ndarray  # [P, K] bool: every judge passes
    baseline_passes: np.ndarray  # [P] bool
    logps: np.ndarray  # [P, K] log pi_w(a|s) at the weights that sampled
    ref_logps: np.ndarray  # [P, K] log pi_ref(a|s)
    baseline_logps: np.ndarray  # [P] log pi_w(a_bar|s) (zeros where the rule needs none)
    lengths: np.ndarray  # [P, K] completion tokens (stop token included)


def _take(a_NxK, i_N):
    return jnp.take_along_axis(a_NxK, i_N[:, None], axis=1)[:, 0]


def _calibrated(r: Rollout):
    return L.calibrated_reward(rewards=r.rewards, baseline_rewards=r.baseline_rewards)


def crpg_rule(logp_PxK, base_P, r: Rollout, t: CGPOTask):
    """CGPO eq. (11)-(12), mean over the P*K responses."""
    del base_P
    r_cr = L.constrained_reward(calibrated_rewards=_calibrated(r), passes=r.passes)
    loss, m = L.crpg(policy_logps_NxK=logp_PxK, ref_logps_NxK=r.ref_logps,
                     constrained_rewards_NxK=r_cr, kl_max=t.kl_max)
    return loss.mean(), {"kept": (m["kl_clipped_reward"] > 0).mean(), "skipped": 0.0}


def codpo_rule(logp_PxK, base_P, r: Rollout, t: CGPOTask):
    """CGPO eq. (14), mean over the prompts with a pair; a prompt with no passing response is
    skipped (counted)."""
    del base_P
    sel = L.codpo_select(rewards_NxK=r.rewards, passes_NxK=r.passes)
    plus, minus = sel.chosen_index, sel.rejected_index
    loss, _ = L.codpo(policy_chosen_logps=_take(logp_PxK, plus),
                      policy_rejected_logps=_take(logp_PxK, minus),
                      ref_chosen_logps=_take(r.ref_logps, plus),
                      ref_rejected_logps=_take(r.ref_logps, minus),
                      chosen_lengths=_take(r.lengths, plus).astype(jnp.float32),
                      beta=t.beta, lambda_=t.lambda_, weight=sel.weight)
    kept = sel.weight.sum()
    return loss.sum() / jnp.maximum(kept, 1.0), {"kept": sel.weight.mean(),
                                                 "skipped": sel.weight.size - kept}


def crraft_rule(logp_PxK, base_P, r: Rollout, t: CGPOTask):
    """CGPO eq. (17)-(18), mean over the prompts kept; a* = a_bar when no sample is kept and
    a_bar passes, else the prompt is skipped (counted)."""
    sel = L.crraft_select(rewards_NxK=r.rewards, log_ratios_NxK=r.logps - r.ref_logps,
                          kl_max=t.kl_max, baseline_passes_N=r.baseline_passes,
                          passes_NxK=r.passes)
    logp = jnp.where(sel.use_baseline, base_P, _take(logp_PxK, sel.index))
    calib = jnp.where(sel.use_baseline, 0.5, _take(_calibrated(r), sel.index))  # sigma(0)
    loss, _ = L.crraft(policy_logps=logp, calibrated_rewards=calib, weight=sel.weight)
    kept = sel.weight.sum()
    return loss.sum() / jnp.maximum(kept, 1.0), {
        "kept": sel.weight.mean(), "skipped": sel.weight.size - kept,
        "used_baseline": sel.use_baseline.mean()}


def rloo_rule(logp_PxK, base_P, r: Rollout, t: CGPOTask):
    """RLOO (the unconstrained baseline, the paper's PPO): leave-one-out advantages of the raw
    reward with the KL folded in; the judges are measured, not applied."""
    del base_P
    total = r.rewards - t.kl_coef * (r.logps - r.ref_logps)
    adv = losses.rloo.rloo_advantages(rewards_NxK=total)
    loss, _ = losses.rloo.policy_gradient(policy_logps=logp_PxK.reshape(-1),
                                          old_logps=r.logps.reshape(-1),
                                          advantages=adv.reshape(-1))
    return loss.mean(), {"kept": 1.0, "skipped": 0.0}


RULES: dict[str, Callable] = {"crpg": crpg_rule, "codpo": codpo_rule, "crraft": crraft_rule,
                              "rloo": rloo_rule}


def coefficients(r: Rollout, t: CGPOTask):
    """(c_PxK, c_baseline_P, loss, metrics): `c = -d loss / d log pi` of the task's rule at the
    rollout's log-probs (float64 numpy), its loss value and scalar metrics."""
    rule = RULES[t.optimizer]
    f = lambda lp, b: rule(lp, b, r, t)  # noqa: E731
    (loss, m), (g, gb) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        jnp.asarray(r.logps, jnp.float32), jnp.asarray(r.baseline_logps, jnp.float32))
    return (-np.asarray(g, np.float64), -np.asarray(gb, np.float64), float(loss),
            {k: float(v) for k, v in m.items()})
