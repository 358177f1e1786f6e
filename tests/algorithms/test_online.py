"""The online RL loop (RLOO): advantages and loss by hand, bit-identical resume after SIGKILL,
the sampler on the trainer's new weights, no recompilation across steps, bad settings."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses
from jaxalign.algorithms.online import OnlineSettings, online_settings, step_prompts
from tests.algorithms import online_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_rloo_advantages_equal_the_leave_one_out_formula_by_hand():
    r = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    # r_i - mean of the other two: [1 - 2.5, 2 - 2, 3 - 1.5], [0 - 1.5, 0 - 1.5, 3 - 0]
    np.testing.assert_allclose(losses.rloo.rloo_advantages(rewards_NxK=r),
                               [[-1.5, 0.0, 1.5], [-1.5, -1.5, 3.0]])
    with pytest.raises(ValueError, match="K >= 2"):
        losses.rloo.rloo_advantages(rewards_NxK=jnp.ones((2, 1)))


def test_policy_gradient_clips_the_sequence_ratio_by_hand():
    logp, old = jnp.log(jnp.array([1.5, 0.5, 1.0])), jnp.zeros(3)
    adv = jnp.array([2.0, -1.0, 1.0])
    loss, m = losses.rloo.policy_gradient(policy_logps=logp, old_logps=old, advantages=adv,
                                          clip_eps=0.2)
    # rho = [1.5, 0.5, 1]: -min(1.5*2, 1.2*2) = -2.4; -min(0.5*-1, 0.8*-1) = 0.8; -1
    np.testing.assert_allclose(loss, [-2.4, 0.8, -1.0], rtol=1e-6)
    np.testing.assert_array_equal(m["clipped"], [1.0, 1.0, 0.0])
    # no clipping: the gradient at rho = 1 is REINFORCE's -A d log pi
    g = jax.grad(lambda lp: losses.rloo.policy_gradient(
        policy_logps=lp, old_logps=lp, advantages=adv)[0].sum())(jnp.zeros(3))
    np.testing.assert_allclose(g, -adv)


@pytest.mark.parametrize("bad, match", [
    (dict(samples=1), "samples must be an integer >= 2"),
    (dict(kl_coef=-0.1), "kl_coef must be >= 0"),
    (dict(clip_eps=0.0), "clip_eps must be > 0"),
    (dict(temperature=0.0), "temperature must be > 0"),
], ids=["one-sample", "negative-kl", "zero-clip", "greedy"])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        OnlineSettings(steps=1, **bad)
    with pytest.raises(ValueError, match="unknown keys \\['kl'\\]"):
        online_settings({"steps": 1, "kl": 0.1})


def test_step_prompts_depend_on_seed_and_step_only():
    prompts = [{"id": i} for i in range(5)]
    a = [r["id"] for s in range(1, 6) for r in step_prompts(prompts, s, 3, seed=1)]
    assert sorted(a[:5]) == list(range(5)) and sorted(a[5:10]) == list(range(5))  # epochs
    assert [r["id"] for r in step_prompts(prompts, 4, 3, seed=1)] == a[9:12]


def _run(workdir, kill: int = 0):
    env = {**os.environ, "KILL": str(kill)}
    p = subprocess.run([sys.executable, "-m", "tests.algorithms.online_tiny", str(workdir)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout + p.stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny run in this process; compilations counted at the end of every step."""
    work = tmp_path_factory.mktemp("online") / "ref"
    compiles, at_step = [], {}

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    def on_step(step):
        at_step[step] = len(compiles)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        out = online_tiny.run(str(work), on_step=on_step)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return work, out, at_step


def test_sigkill_then_resume_is_bit_identical(uninterrupted, tmp_path):
    """Killed after step 3 (its last checkpoint: step 2), restarted: the same params as the
    uninterrupted run; metrics hold every update once."""
    ref_dir, out, _ = uninterrupted
    rc, log = _run(tmp_path, kill=3)
    assert rc == -signal.SIGKILL, log
    assert not os.path.exists(tmp_path / "final.npz")
    rc, log = _run(tmp_path)
    assert rc == 0, log
    got, want = np.load(tmp_path / "final.npz"), online_tiny.flat(out["params"])
    assert sorted(got.files) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    passes = online_tiny.SETTINGS.passes
    assert [r["step"] for r in rows if "rollout/reward" in r] == [
        s * passes for s in range(1, online_tiny.SETTINGS.steps + 1)]


def test_no_recompilation_once_every_program_has_run(uninterrupted):
    """Step 1 compiles the sampler, the log-prob pass and the train step, the first checkpoint
    (after step 2) its own helpers; steps 4 and 5 (sampling, scoring, two updates and a
    checkpoint each) compile nothing."""
    _, out, at_step = uninterrupted
    assert at_step[1] > 0, "no compilation was observed at all"
    assert at_step[5] == at_step[3], at_step
    assert [h["step"] for h in out["history"]] == list(range(1, 6))
    for h in out["history"]:  # per-step metrics: reward, KL, each phase's time and tokens/s
        assert {"reward", "kl", "sample_seconds", "sample_tokens_per_s", "score_seconds",
                "train_seconds", "train_tokens_per_s", "ratio"} <= set(h), sorted(h)
        assert all(np.isfinite(v) for v in h.values())


def test_the_sampler_sees_the_trained_weights(uninterrupted):
    """After training, the sampler's log-probs of a greedy completion (decode, KV cache) equal
    the full forward pass's under the trained params, and differ from the initial params'."""
    from jaxalign.models import completion_logprobs, init_params
    from jaxalign.sampling import Sampler
    _, out, _ = uninterrupted
    tok, prompts, _ = online_tiny.setup()
    init = init_params(online_tiny.CFG, jax.random.key(0))
    sampler = Sampler(online_tiny.CFG, init, tok, max_len=online_tiny.MAX_LEN)
    sampler.set_params(out["params"])
    prompt = prompts[0]["prompt_tokens"]
    s = sampler(prompt_ids=[prompt], n=1, max_new_tokens=6, temperature=0.0)
    completion = s.tokens[0, 0, :s.lengths[0, 0]]
    tokens = np.asarray([list(prompt) + completion.tolist()])
    mask = np.ones_like(tokens, bool)
    loss_mask = np.zeros_like(mask)
    loss_mask[0, len(prompt):] = True
    full = completion_logprobs(online_tiny.CFG, out["params"], tokens, mask, loss_mask).sum
    before = completion_logprobs(online_tiny.CFG, init, tokens, mask, loss_mask).sum
    decoded = s.model_logprobs[0, 0, :s.lengths[0, 0]].sum()
    np.testing.assert_allclose(decoded, full[0], atol=1e-4)
    assert abs(float(full[0]) - float(before[0])) > 1e-3


def test_rloo_runner_from_files_through_the_entry_point(tmp_path):
    """`config.algorithm = "rloo"` (experiments/rloo_toy.py:smoke): policy, random reward model
    and toy prompt file; every step logged once, online.json written, a rerun resumes at the
    end (no step run twice)."""
    from experiments import rloo_toy
    from jaxalign.main import run_config
    c = rloo_toy.get_config("smoke")
    c.workdir = str(tmp_path)
    out = run_config(c)
    assert [h["step"] for h in out["history"]] == list(range(1, c.online.steps + 1))
    summary = json.loads((tmp_path / "online.json").read_text())
    assert summary["settings"]["steps"] == c.online.steps and summary["last"]["step"] == 4
    again = run_config(c)
    assert again["history"] == []
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows if "rollout/reward" in r] == [2, 4, 6, 8]  # passes = 2
