r"""DPO of Mistral-7B-Instruct-v0.2 on UltraFeedback-binarized, with the DPO reference
hyperparameters (beta 0.1, lr 5e-7, batch 64, RMSprop, 150 warmup steps, max_len 512,
max_prompt 256, grad-norm clip 10).

Validate shapes and memory without running (any machine, nothing allocated):
    python -m jaxalign --config experiments/dpo_mistral_ultrafeedback.py --dry_run
Run on a TPU slice (checkpoint and data on local disk or a mounted bucket):
    python -m jaxalign --config experiments/dpo_mistral_ultrafeedback.py \
        --config.model.hf_path=/ckpt/Mistral-7B-Instruct-v0.2 \
        --config.tokenizer=/ckpt/Mistral-7B-Instruct-v0.2 \
        --config.data.train=/data/ultrafeedback_binarized/train_prefs.parquet \
        --config.data.eval=/data/ultrafeedback_binarized/test_prefs.parquet \
        --workdir /runs/dpo_mistral
`smoke` shrinks it to a random 2-layer model of the same family on the toy set (CPU, seconds).
"""

import ml_collections

from experiments import check_arg, dpo_toy


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    if arg == "smoke":
        c = dpo_toy.get_config("smoke")
        c.model.preset = "bench-tiny"
        c.optim.optimizer = "rmsprop"
        c.dry_run_meshes = {"cpu": dict(data=1, fsdp=1, model=1)}
        return c
    c = dpo_toy.get_config()
    c.workdir = "results/dpo_mistral_ultrafeedback"
    c.tokenizer = ""  # a local tokenizer directory, usually the checkpoint's
    c.model = ml_collections.ConfigDict(dict(
        preset="mistral-7b-instruct-v0.2", hf_path="", dtype="bfloat16",
        param_dtype="float32", remat="full", scan_layers=True))
    c.data = ml_collections.ConfigDict(dict(
        toy=False, toy_train=0, toy_eval=0, train="", eval="", max_length=512,
        max_prompt_length=256, truncation_mode="keep_end", batch_size=64, on_error="skip"))
    c.loss = ml_collections.ConfigDict(dict(name="dpo.sigmoid", kwargs=dict(beta=0.1)))
    c.reference = "precomputed"  # the frozen 7B reference never sits in HBM during training
    c.lean_logprobs = True
    c.optim = ml_collections.ConfigDict(dict(
        optimizer="rmsprop", lr=5e-7, warmup_steps=150, decay="constant", total_steps=0,
        grad_clip=10.0))
    # One epoch of UltraFeedback-binarized train_prefs (61,135 pairs) at batch 64.
    c.loop = ml_collections.ConfigDict(dict(
        total_steps=955, micro_batches=8, log_every=10, eval_every=100, checkpoint_every=100,
        keep_checkpoints=2, best_metric="eval/reward_accuracy", async_checkpoints=True,
        progress_bar=True))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, model=1))
    # TPU slices the dry run sizes (jaxalign.models.slices: chips and HBM from the name; fsdp
    # over all chips). v5e-8 = v5litepod-8: 8 chips, 16 GiB each; v5p-64: 32 chips, 95 GiB.
    c.dry_run_meshes = {"v5e-8": "v5litepod-8", "v5p-8": "v5p-8", "v5p-64": "v5p-64"}
    return c
