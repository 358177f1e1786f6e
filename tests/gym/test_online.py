"""RLOO (`jaxalign.algorithms.online`) on the gym: a smoke run on the sentiment task's true
reward raises it on fresh test prompts."""

import jax

from jaxalign.algorithms.online import OnlineSettings, run_online
from jaxalign.gym import tasks
from jaxalign.gym import rest as rest_gym
from jaxalign.sampling import Sampler
from jaxalign.sharding import make_mesh


def test_rloo_smoke_raises_the_true_reward(ref, tmp_path):
    task, lang = tasks.TASKS["sentiment"], ref.language
    prompts = [{"id": i, "prompt_tokens": [int(t) for t in p]}
               for i, p in enumerate(lang.sample_prompts(32, 5, "text"))]
    test = lang.sample_prompts(32, 99, "text")

    def score(records):
        return {"reward": tasks.score(task.reward, [r["prompt_tokens"] for r in records],
                                      [r["tokens"] for r in records])}

    evaluator = Sampler(ref.model_cfg, ref.params, ref.tokenizer, max_len=64)
    before = rest_gym.test_scores(evaluator, score, ref.params, test, 2, 24, seed=1)["reward"]
    settings = OnlineSettings(steps=8, prompts_per_step=8, samples=4, max_new_tokens=24,
                              kl_coef=0.05, clip_eps=0.2, passes=2, checkpoint_every=8)
    out = run_online(settings, policy=(ref.model_cfg, ref.params), tokenizer=ref.tokenizer,
                     prompts=prompts, score=score, workdir=str(tmp_path),
                     optim=dict(optimizer="adamw", lr=3e-4, warmup_steps=2, decay="constant",
                                grad_clip=1.0), seed=0, max_len=64,
                     mesh=make_mesh(devices=jax.devices()[:1]))
    after = rest_gym.test_scores(evaluator, score, out["params"], test, 2, 24, seed=1)["reward"]
    rewards = [h["reward"] for h in out["history"]]
    print(f"true reward on test prompts: {before:.3f} -> {after:.3f}; per step {rewards}")
    assert after > before + 0.05, (before, after, rewards)
