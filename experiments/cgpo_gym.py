r"""CGPO on the gym (Xu et al. 2024, Table 2's PPO-vs-CGPO contrast): RLOO (unconstrained, the
paper's PPO) against CRPG, CRRAFT and CODPO, on two tasks whose rewards are hackable proxies.

    python -m jaxalign --config experiments/cgpo_gym.py --workdir results/cgpo_gym
    python -m jaxalign --config experiments/cgpo_gym.py:smoke --workdir /tmp/cgpo_gym

Tasks (`jaxalign.gym.cgpo`): chat (sentiment proxy) and help (helpfulness proxy), disjoint text
prompts, judged by no repetition, 1..16 words and ending on EOS; a `math` kind (arithmetic
prompts, answer and format judges) is available for `tasks`. KL_max, K, lambda, rho and the
learning rate are ours (the paper gives none). Writes cgpo.md, cgpo.json and cgpo.png under
the workdir. Full (3 seeds, 4 methods, 60 steps; ~33 min on 2 CPU cores): RLOO's violation
rate rises from 0.17 to ~0.35 while CRPG/CRRAFT/CODPO stay under 0.07; counting violating
responses as 0, CRRAFT has the best true reward on both tasks (docs/cgpo_gym/). `smoke` (one
seed, RLOO and CRPG, 16 steps; ~3.5 min): RLOO's violations ~0.47, CRPG's ~0.03.
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.algorithm = "cgpo_gym"
    c.workdir = "results/cgpo_gym"
    c.cache_dir = ""  # "" = $JAXALIGN_GYM_CACHE or ~/.cache/jaxalign/gym
    c.reference = ml_collections.ConfigDict()  # ReferenceConfig overrides (part of the hash)
    c.seeds = [0] if smoke else [0, 1, 2]
    c.methods = ["rloo", "crpg"] if smoke else ["rloo", "crpg", "crraft", "codpo"]
    c.label_temperature = 0.5
    c.proxy = ml_collections.ConfigDict(dict(num_pairs=128 if smoke else 256,
                                             steps=40 if smoke else 100))
    task = dict(samples=4, prompts_per_step=8, kl_max=20.0, rho=1.0, beta=0.1, lambda_=1.0,
                kl_coef=0.05, baseline="reference")
    # kind: chat (sentiment proxy), help (helpfulness proxy), math (arithmetic proxy)
    c.tasks = ml_collections.ConfigDict(dict(
        chat=dict(task, kind="chat", num_prompts=64 if smoke else 256, max_tokens=16),
        help=dict(task, kind="help", num_prompts=64 if smoke else 256, max_tokens=16)))
    c.cgpo = ml_collections.ConfigDict(dict(steps=16 if smoke else 60, max_new_tokens=24,
                                            temperature=1.0, top_p=1.0, checkpoint_every=20,
                                            sample_batch=64))
    c.optim = ml_collections.ConfigDict(dict(optimizer="adamw", lr=1e-3, warmup_steps=2,
                                             decay="constant", grad_clip=1.0))
    c.num_test = 32 if smoke else 128
    c.test_samples = 2 if smoke else 4
    c.max_len = 64
    return c
