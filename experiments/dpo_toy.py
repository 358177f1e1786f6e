r"""DPO on the generated toy preference set (chosen completions use positive words).

    python -m jaxalign --config experiments/dpo_toy.py:smoke --workdir /tmp/dpo_toy
    python -m jaxalign --config experiments/dpo_toy.py --workdir /tmp/dpo_toy_full

`smoke`: a 2-layer Llama of hidden 64 from random init, 40 steps of batch 16, ~30 s on 2 CPU
cores; held-out reward accuracy goes from ~0.5 to > 0.9. The default config trains 200 steps.
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.algorithm = "dpo"
    c.workdir = "results/dpo_toy"
    c.seed = 0
    c.tokenizer = "toy"
    c.model = ml_collections.ConfigDict(dict(
        preset="bench-tiny", vocab_size=64, initializer_range=0.02, dtype="float32",
        param_dtype="float32", remat="none", scan_layers=False))
    c.data = ml_collections.ConfigDict(dict(
        toy=True, toy_train=256 if smoke else 2048, toy_eval=64, train="", eval="",
        max_length=32, max_prompt_length=16, truncation_mode="keep_end", batch_size=16,
        on_error="raise"))
    c.loss = ml_collections.ConfigDict(dict(name="dpo.sigmoid", kwargs=dict(beta=0.1)))
    c.reference = "on_the_fly"  # or "precomputed"; "none" for reference-free losses
    # LoRA (jaxalign.train.lora): rank 0 is a full fine-tune. A section rather than None so
    # that `--config.lora.rank=8 --config.lora.targets=q,v` overrides work on the command line.
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=("q", "k", "v")))
    c.lean_logprobs = False
    c.optim = ml_collections.ConfigDict(dict(
        optimizer="adamw", lr=3e-3, warmup_steps=5, decay="linear",
        total_steps=40 if smoke else 200, grad_clip=10.0))
    c.loop = ml_collections.ConfigDict(dict(
        total_steps=40 if smoke else 200, micro_batches=1, log_every=5, eval_every=20,
        checkpoint_every=20, keep_checkpoints=2, best_metric="eval/reward_accuracy",
        async_checkpoints=True, progress_bar=True))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.export_hf = False
    c.dry_run_meshes = {"cpu": dict(data=1, fsdp=1, model=1)}  # --dry_run sizes memory on these
    return c
