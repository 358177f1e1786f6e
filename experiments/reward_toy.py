r"""Bradley-Terry reward model on the generated toy preference set (chosen = positive words).

    python -m jaxalign --config experiments/reward_toy.py:smoke --workdir /tmp/rm_toy
    python -m jaxalign --config experiments/reward_toy.py --workdir /tmp/rm_toy_full

`smoke`: a 2-layer Llama of hidden 64 from random init with a score head, 30 steps of batch 16
(~15 s on 2 CPU cores); held-out pairwise accuracy goes from ~0.5 to ~1.0 on 64 pairs.
The default config trains 200 steps on 2048 pairs and exports a HF reward checkpoint.
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    smoke = arg == "smoke"
    steps = 30 if smoke else 200
    c = ml_collections.ConfigDict()
    c.algorithm = "reward_bt"
    c.workdir = "results/reward_toy"
    c.seed = 0
    c.tokenizer = "toy"
    c.model = ml_collections.ConfigDict(dict(
        preset="bench-tiny", vocab_size=64, initializer_range=0.02, dtype="float32",
        param_dtype="float32", remat="none", scan_layers=False))
    c.data = ml_collections.ConfigDict(dict(
        toy=True, toy_train=256 if smoke else 2048, toy_eval=64, train="", eval="",
        max_length=32, max_prompt_length=16, truncation_mode="keep_end", batch_size=16,
        on_error="raise"))
    c.loss = ml_collections.ConfigDict(dict(margin=0.0))
    c.optim = ml_collections.ConfigDict(dict(
        optimizer="adamw", lr=3e-3, warmup_steps=5, decay="linear", total_steps=steps,
        grad_clip=10.0))
    c.loop = ml_collections.ConfigDict(dict(
        total_steps=steps, micro_batches=1, log_every=5, eval_every=0 if smoke else 50,
        checkpoint_every=steps, keep_checkpoints=1,
        best_metric=None if smoke else "eval/reward_accuracy",
        async_checkpoints=True, progress_bar=True))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.export_hf = not smoke
    return c
