"""CGPO's multi-task loop (`jaxalign.algorithms.cgpo`) and its update rules (`cgpo_rules`).

The rules are checked by hand and against autodiff through the model: the coefficients the loop
trains on give exactly the gradient of sum_l rho_l loss_l (the paper's Algorithm 2 update)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms.cgpo import CGPOSettings, judge_records, run_cgpo
from jaxalign.algorithms.cgpo_rules import RULES, CGPOTask, Rollout, check_tasks, coefficients
from jaxalign.models import completion_logprobs, init_params
from jaxalign.reward.judges import Judge, JudgeError
from tests.algorithms import rest_tiny
from tests.algorithms.rest_tiny import CFG


def rollout(**kw) -> Rollout:
    base = dict(rewards=np.array([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]]),
                baseline_rewards=np.array([1.0, 0.0]),
                passes=np.array([[True, False, True], [False, False, False]]),
                baseline_passes=np.array([True, True]),
                logps=np.array([[-3.0, -4.0, -5.0], [-2.0, -6.0, -4.0]]),
                ref_logps=np.array([[-3.5, -4.0, -4.0], [-2.0, -5.0, -4.5]]),
                baseline_logps=np.array([-7.0, -8.0]),
                lengths=np.array([[2, 4, 5], [3, 3, 3]]))
    return Rollout(**{**base, **kw})


def task(optimizer="crpg", **kw) -> CGPOTask:
    return CGPOTask("t", [{"id": 0, "prompt_tokens": [5]}], score=None, optimizer=optimizer,
                    samples=3, **kw)


def sig(x):
    return 1 / (1 + np.exp(-x))


def test_crpg_coefficients_by_hand():
    r, t = rollout(), task("crpg", kl_max=2.0)
    c, cb, _, m = coefficients(r, t)
    calib = sig(r.rewards - r.baseline_rewards[:, None])
    rtil = np.maximum(1 - (r.logps - r.ref_logps) / 2.0, 0) * calib * r.passes  # eq. (11)
    want = (rtil - rtil.mean(1, keepdims=True)) / 6  # eq. (12), mean over the 6 responses
    np.testing.assert_allclose(c, want, rtol=1e-6)
    assert not cb.any() and m["skipped"] == 0


def test_codpo_coefficients_by_hand_and_the_all_violating_prompt_is_skipped():
    r, t = rollout(), task("codpo", beta=0.5, lambda_=2.0)
    c, _, _, m = coefficients(r, t)
    # prompt 0: a+ = sample 2 (reward 2, passes), a- = sample 1 (the only violator)
    h = (r.logps[0, 2] - r.ref_logps[0, 2]) - (r.logps[0, 1] - r.ref_logps[0, 1])
    want = np.zeros((2, 3))
    want[0, 2] = 0.5 * sig(-0.5 * h) + 2.0 / 5  # eq. (14): d/d log pi(a+), |a+| = 5
    want[0, 1] = -0.5 * sig(-0.5 * h)
    np.testing.assert_allclose(c, want, rtol=1e-6)  # prompt 1: no passing response, skipped
    assert m["skipped"] == 1 and m["kept"] == 0.5


def test_crraft_coefficients_by_hand_with_the_baseline_fallback():
    r = rollout(logps=np.array([[-3.0, -4.0, -1.0], [-2.0, -6.0, -4.0]]))
    c, cb, _, m = coefficients(r, task("crraft", kl_max=1.0))
    # prompt 0: sample 2 passes but log-ratio 3 > KL_max, sample 0 (0.5) is kept: a* = 0
    # prompt 1: nothing passes, a_bar passes: a* = a_bar with R_calib = sigma(0) (eq. 17)
    want = np.zeros((2, 3))
    want[0, 0] = sig(1.0 - 1.0) / 2
    np.testing.assert_allclose(c, want, rtol=1e-6)
    np.testing.assert_allclose(cb, [0.0, 0.5 / 2], rtol=1e-6)
    assert m["skipped"] == 0 and m["used_baseline"] == 0.5
    c, cb, _, m = coefficients(r._replace(baseline_passes=np.array([True, False])),
                               task("crraft", kl_max=1.0))
    assert m["skipped"] == 1 and not cb.any() and c[0, 0] == pytest.approx(0.5)  # eq. (17) skip


def test_rloo_coefficients_are_the_leave_one_out_advantages():
    r = rollout()
    c, _, _, _ = coefficients(r, task("rloo", kl_coef=0.1))
    total = r.rewards - 0.1 * (r.logps - r.ref_logps)
    want = (total - (total.sum(1, keepdims=True) - total) / 2) / 6
    np.testing.assert_allclose(c, want, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["codpo", "crraft"])
def test_coefficients_give_the_gradient_of_the_task_loss_through_the_model(optimizer):
    """d/dw of sum_i -c_i log pi_w(y_i|x_i) equals d/dw of the rule's loss at the same w: for
    CODPO's pair loss (not linear in the log-probs) and CRRAFT's baseline row (CRPG's and
    RLOO's losses are linear in them: their coefficients are checked by hand above)."""
    params = init_params(CFG, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 60, (8, 10)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    loss_mask = np.zeros_like(mask)
    loss_mask[:, 4:] = True
    lp = lambda p: completion_logprobs(CFG, p, tokens, mask, loss_mask).sum  # noqa: E731
    old = np.asarray(lp(params), np.float64)
    r = rollout(logps=old[:6].reshape(2, 3), baseline_logps=old[6:],
                ref_logps=old[:6].reshape(2, 3) + rng.normal(0, 0.5, (2, 3)),
                passes=np.array([[True, False, True], [False, optimizer == "codpo", False]]))
    t = task(optimizer, kl_max=1.0)
    c, cb, _, m = coefficients(r, t)
    assert optimizer == "codpo" or m["used_baseline"] == 0.5  # CRRAFT: prompt 1 takes a_bar
    coef = jnp.asarray(np.concatenate([c.reshape(-1), cb]), jnp.float32)
    direct = jax.jit(jax.grad(
        lambda p: RULES[optimizer](lp(p)[:6].reshape(2, 3), lp(p)[6:], r, t)[0]))(params)
    surrogate = jax.jit(jax.grad(lambda p: -(coef * lp(p)).sum()))(params)
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(surrogate)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def rows(n, start=0, text="p"):
    return [{"id": f"{text}{i}", "prompt_tokens": [5, 6 + i + start], "prompt": f"{text} {i}"}
            for i in range(n)]


@pytest.mark.parametrize("tasks, match", [
    ([CGPOTask("a", [], score=None)], "task 'a' has no prompts"),
    ([CGPOTask("a", rows(2), score=None), CGPOTask("b", rows(2, 5, "q") + rows(1), None)],
     "prompt id 'p0' of task 'b' is also in task 'a'"),
    ([CGPOTask("a", rows(2), score=None), CGPOTask("b", rows(2, 1, "q"), None)],
     "prompt 'q0' of task 'b' is also in task 'a'"),
    ([CGPOTask("a", rows(2), score=None, kl_max=0.0)], "kl_max must be > 0"),
    ([CGPOTask("a", rows(2), score=None, kl_max=-1.0, optimizer="crraft")], "kl_max must be"),
    ([CGPOTask("a", rows(2), score=None, optimizer="ppo")], "optimizer 'ppo' is not one of"),
    ([CGPOTask("a", rows(2), score=None, samples=1)], "samples must be an integer >= 2"),
    ([CGPOTask("a", rows(2), score=None, baseline="data")], "has no baseline_tokens"),
    ([], "at least one task"),
])
def test_bad_tasks_are_refused(tasks, match):
    with pytest.raises(ValueError, match=match):
        check_tasks(tasks)


class Fixed(Judge):
    def __init__(self, name, value):
        self.name, self.value = name, value

    def judge(self, prompts, completions, metadata):
        return self.value


def records(n):
    return [{"prompt": "p", "completion": "c", "metadata": {}} for _ in range(n)]


@pytest.mark.parametrize("value, match", [
    (np.ones(3, bool), r"task 't': judge 'bad' returned verdicts of shape \(3,\) for 2"),
    (np.array([0.2, 0.9]), "task 't': judge 'bad' returned verdicts of dtype float64"),
])
def test_a_judge_of_the_wrong_shape_or_type_is_named(value, match):
    t = CGPOTask("t", rows(1), score=None, judges=[Fixed("ok", np.ones(2, bool)),
                                                   Fixed("bad", value)])
    with pytest.raises(JudgeError, match=match):
        judge_records(t, records(2))


# ---- the loop, on rest_tiny's model and toy prompts ----

class Seen(Judge):
    """Passes responses without a negative word; remembers the prompts it judged."""

    def __init__(self, name, bad_words):
        self.name, self.bad, self.prompts = name, set(bad_words), []

    def judge(self, prompts, completions, metadata):
        self.prompts += list(prompts)
        return np.array([not (set(c.split()) & self.bad) for c in completions])


def loop_setup():
    from jaxalign.data import toy
    tok, data, _, score = rest_tiny.setup()
    ps = [{"id": r["id"], "prompt_tokens": r["prompt_tokens"], "prompt": r["prompt"]}
          for r in data]
    judges = [Seen("no_negative", toy.NEGATIVE), Seen("no_negative_b", toy.NEGATIVE[:2])]
    tasks = [CGPOTask("chat", ps[:8], score, judges=[judges[0]], optimizer="crpg", samples=2,
                      prompts_per_step=2, kl_max=5.0, rho=2.0),
             CGPOTask("math", ps[8:12], score, judges=[judges[1]], optimizer="crraft",
                      samples=2, prompts_per_step=2, kl_max=5.0),
             CGPOTask("pairs", ps[12:], score, optimizer="codpo", samples=2,
                      prompts_per_step=2, baseline="reference")]
    return tok, tasks, judges


def run_tiny(workdir, steps):
    tok, tasks, judges = loop_setup()
    settings = CGPOSettings(steps=steps, max_new_tokens=6, checkpoint_every=2, sample_batch=4)
    out = run_cgpo(settings, tasks, policy=(CFG, init_params(CFG, jax.random.key(0))),
                   tokenizer=tok, workdir=str(workdir), seed=0, max_len=24,
                   optim=dict(optimizer="adamw", lr=1e-2, warmup_steps=0, decay="constant"))
    return out, tasks, judges


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    work = tmp_path_factory.mktemp("cgpo")
    return work, *run_tiny(work, 3)


def test_each_task_is_judged_on_its_own_prompts_only(three_steps):
    _, out, tasks, judges = three_steps
    for t, j in zip(tasks, judges):
        own = {r["prompt"] for r in t.prompts}
        assert j.prompts and set(j.prompts) <= own, (t.name, set(j.prompts) - own)
    h = out["history"][-1]
    for name in ("chat", "math", "pairs"):
        assert {f"{name}/{k}" for k in ("reward", "calibrated_reward", "violation", "kl",
                                        "kept", "skipped", "loss")} <= set(h)
    assert "chat/violation/no_negative" in h and "math/violation/no_negative_b" in h
    assert {"sample_seconds", "score_seconds", "judge_seconds", "train_seconds"} <= set(h)
    assert all(np.isfinite(v) for v in h.values())


def test_a_restart_resumes_to_the_same_parameters(three_steps, tmp_path):
    """Two steps (checkpoint at 2), then a new call to 3: the uninterrupted run's params;
    metrics hold each step once; the baselines are read back, not drawn again."""
    work, out, _, _ = three_steps
    run_tiny(tmp_path, 2)
    again, _, _ = run_tiny(tmp_path, 3)
    assert [h["step"] for h in again["history"]] == [3]
    for a, b in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(again["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")
             if "rollout/chat/reward" in x]
    assert steps == [1, 2, 3]
    assert (tmp_path / "cgpo" / "baseline-math.jsonl.commit").exists()
