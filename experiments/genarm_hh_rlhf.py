r"""GenARM's autoregressive reward model on HH-RLHF (Xu et al. 2024, Section 6.1 setup): LoRA
r=8, alpha=16 on q/k/v of a LLaMA-7B SFT model, beta_r = 0.05, lr 5e-4, 1 epoch, batch 32.

Validate shapes and memory without running (any machine, nothing allocated):
    python -m jaxalign --config experiments/genarm_hh_rlhf.py --dry_run
Train on a TPU slice (the SFT checkpoint and Anthropic/hh-rlhf JSONL on local disk):
    python -m jaxalign --config experiments/genarm_hh_rlhf.py \
        --config.model.hf_path=/ckpt/llama-7b-sft --config.tokenizer=/ckpt/llama-7b-sft \
        --config.data.train=/data/hh-rlhf/train.jsonl --config.data.eval=/data/hh-rlhf/test.jsonl \
        --workdir /runs/genarm_hh
HH-RLHF rows are {"chosen", "rejected"} dialogues; the prompt is read up to the last
"\n\nAssistant:" (jaxalign.data.readers). The ARM trains adapters only (the checkpoints hold
them); `export_hf` writes the merged weights, which guide a base model at decoding time:
    Sampler(base_cfg, base_params, tok, guides=[GuideModel(arm_cfg, arm_params, weight=1/0.05)])
Not in the paper's text (our choices, stated): max length 512 / prompt 256 (the DPO reference's),
AdamW with 3% warmup and linear decay, grad-norm clip 10.
`smoke` shrinks it to a random 2-layer Llama on the toy preference set (CPU, seconds).
"""

import ml_collections

from experiments import check_arg, dpo_toy


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    c = dpo_toy.get_config("smoke" if arg == "smoke" else "")
    c.algorithm = "arm"
    c.loss = ml_collections.ConfigDict(dict(name="genarm.arm", kwargs=dict(beta=0.05, gamma=0.0)))
    c.reference = "none"  # the ARM's reward needs no reference model
    c.lora = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, targets=("q", "k", "v")))
    c.loop.best_metric = "eval/reward_accuracy"
    if arg == "smoke":
        c.optim.lr = 5e-3
        c.dry_run_meshes = {"cpu": dict(data=1, fsdp=1, model=1)}
        return c
    c.workdir = "results/genarm_hh_rlhf"
    c.tokenizer = ""  # a local tokenizer directory, usually the checkpoint's
    # LLaMA-1 7B has Llama-2-7B's shapes (max positions 2048): the preset sizes the dry run
    c.model = ml_collections.ConfigDict(dict(
        preset="llama-2-7b", hf_path="", dtype="bfloat16", param_dtype="bfloat16",
        remat="full", scan_layers=True))
    c.data = ml_collections.ConfigDict(dict(
        toy=False, toy_train=0, toy_eval=0, train="", eval="", max_length=512,
        max_prompt_length=256, truncation_mode="keep_end", batch_size=32, on_error="skip"))
    c.lean_logprobs = True
    # 1 epoch of HH-RLHF's 160,800 training pairs at batch 32
    c.optim = ml_collections.ConfigDict(dict(
        optimizer="adamw", lr=5e-4, warmup_steps=150, decay="linear", total_steps=5025,
        grad_clip=10.0))
    c.loop = ml_collections.ConfigDict(dict(
        total_steps=5025, micro_batches=2, log_every=10, eval_every=500, checkpoint_every=500,
        keep_checkpoints=2, best_metric="eval/reward_accuracy", async_checkpoints=True,
        progress_bar=True))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, model=1))
    c.export_hf = True
    # TPU slices the dry run sizes (jaxalign.models.slices; fsdp over all chips)
    c.dry_run_meshes = {"v5e-8": "v5litepod-8", "v5p-8": "v5p-8", "v5p-64": "v5p-64"}
    # The dry run's sampling phase: the guided decoding the ARM is trained for (a base of the
    # same shapes plus the merged ARM, a KV cache each). Sizing assumptions, not the paper's:
    # batches of 32 prompts x 1 sample, prompts up to 256 tokens, 128 new tokens.
    c.dry_run_sampling = ml_collections.ConfigDict(dict(
        prompts=32, samples=1, max_len=512, max_prompt_length=256, max_new_tokens=128))
    return c
