r"""RLOO, the online RL baseline (Ahmadian et al. 2024; the CGPO and ReST papers' OnlineRL row
is PPO, which it stands in for), from files: a policy, a scalar reward model, a prompt file.

    python -m jaxalign --config experiments/rloo_toy.py:smoke --workdir /tmp/rloo_smoke

`smoke`: a random 2-layer policy and reward model on the toy prompts, 4 steps of 8 prompts x 2
samples, ~30 s on 2 CPU cores (a plumbing check: a random reward model teaches nothing). The
default config is the same with 200 steps; point `model`, `reward` and `data.prompts` at real
checkpoints and a prompt file for a real run.
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.algorithm = "rloo"
    c.workdir = "results/rloo_toy"
    c.seed = 0
    c.tokenizer = "toy"
    tiny = dict(preset="bench-tiny", hf_path="", vocab_size=64, initializer_range=0.02,
                dtype="float32", param_dtype="float32", remat="none", scan_layers=True)
    c.model = ml_collections.ConfigDict(tiny)
    c.reward = ml_collections.ConfigDict(dict(tiny, tokenizer="", max_length=32,
                                              max_prompt_length=16, batch_size=16))
    c.data = ml_collections.ConfigDict(dict(
        toy=True, toy_prompts=32, prompts="", prompt_rows=0, max_length=32,
        max_prompt_length=16, chat=False, on_error="raise"))
    c.online = ml_collections.ConfigDict(dict(
        steps=4 if smoke else 200, prompts_per_step=8, samples=2, max_new_tokens=8,
        temperature=1.0, top_p=1.0, kl_coef=0.05, clip_eps=0.2, passes=2,
        checkpoint_every=2 if smoke else 20, sample_batch=16))
    c.optim = ml_collections.ConfigDict(dict(optimizer="adamw", lr=1e-4, warmup_steps=1,
                                             decay="constant", grad_clip=1.0))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    return c
