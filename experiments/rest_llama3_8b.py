r"""ReST (Gulcehre et al. 2023, arXiv 2308.08998) on Llama-3-8B-Instruct, scored by the
Skywork-Reward-Llama-3.1-8B Bradley-Terry reward model: BC on D, then G=2 grow steps of
n=25 samples per prompt at temperature 0.8, each followed by I=4 improve steps (plus the one
on all of D_g) with thresholds from [0.7, 0.8, 0.9, 0.95, 0.99] above the mean of the
sigmoid-normalised reward, a lower learning rate per improve step, and the checkpoint with
the best held-out reward-model score kept at every step.

Validate shapes and memory without running (any machine, nothing allocated, seconds):
    python -m jaxalign --config experiments/rest_llama3_8b.py --dry_run
Run on a TPU slice (checkpoints, tokenizers and data on local disk or a mounted bucket):
    python -m jaxalign --config experiments/rest_llama3_8b.py \
        --config.model.hf_path=/ckpt/Meta-Llama-3-8B-Instruct \
        --config.tokenizer=/ckpt/Meta-Llama-3-8B-Instruct \
        --config.reward.hf_path=/ckpt/Skywork-Reward-Llama-3.1-8B \
        --config.reward.tokenizer=/ckpt/Skywork-Reward-Llama-3.1-8B \
        --config.data.train=/data/ultrachat_200k/train_sft.parquet \
        --config.data.eval=/data/ultrachat_200k/test_gen.parquet \
        --workdir /runs/rest_llama3_8b
Any SFT file of {"prompt", "completion"} or {"messages"} rows is D; any prompt file of
{"prompt"} or {"messages"} rows gives the held-out prompts. A killed run restarted with the same
command resumes where it stopped (`jaxalign.algorithms.driver`). The stage table (BC, G1I0 ..
G1I4, G2I0 .. G2I4, each with its held-out reward) is written to <workdir>/rest_stages.json.
Runtime and final numbers of the full run: not measured yet.
Smoke run (random 2-layer policy and reward model, toy data, CPU, well under a minute):
    python -m jaxalign --config experiments/rest_llama3_8b.py:smoke --workdir /tmp/rest_smoke

From the paper (machine translation): temperature 0.8; thresholds [0.7, 0.8, 0.9, 0.95, 0.99]
on a [0, 1] reward, above the current mean; I=4 improve steps per grow step (WMT); each
improve step from the previous policy with a lower learning rate, keeping the best
validation-reward checkpoint; the BC loss. n=25 candidates per prompt: the paper's WMT
setting (100 for IWSLT), the one that goes with I=4, and the grow cost is n samples of up to
512 tokens from an 8B model per prompt of D. G=2: the paper's best row (G=2 I=3, Table 1).
Ours (not in the paper): the models and the data (the paper trains translation models with a
learned metric as reward); sigmoid as the map of the raw reward to [0, 1] (the paper scales
its metric, Skywork's score is unbounded); the lr halved per improve step; AdamW at lr 1e-6,
batch 64, 300 BC steps and 1000 steps per improve step (the paper ran 500k SGD steps per
improve step); 10,000 prompts of D and 256 held-out prompts with 2 samples each; lengths
(1024 tokens, prompt 512, 512 new tokens); float32 policy params (bf16 compute: AdamW updates
at lr 1e-6 are lost in bf16 weights), bf16 reward model (frozen).
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    if arg == "smoke":
        return smoke()
    c = ml_collections.ConfigDict()
    c.algorithm = "rest"
    c.workdir = "results/rest_llama3_8b"
    c.seed = 0
    c.start_over = False
    c.tokenizer = ""  # a local tokenizer directory, usually the policy checkpoint's
    # Meta-Llama-3-8B-Instruct has Meta-Llama-3-8B's shapes: the preset sizes the dry run
    c.model = ml_collections.ConfigDict(dict(
        preset="llama-3-8b", hf_path="", dtype="bfloat16", param_dtype="float32",
        remat="full", scan_layers=True))
    c.reward = ml_collections.ConfigDict(dict(
        preset="skywork-reward-llama-3.1-8b", hf_path="", tokenizer="", dtype="bfloat16",
        param_dtype="bfloat16", scan_layers=True, max_length=1280, max_prompt_length=768,
        batch_size=64))  # its own chat template (Llama-3.1's) adds a system header: room
    c.data = ml_collections.ConfigDict(dict(
        toy=False, toy_train=0, toy_eval=0, train="", eval="", train_rows=10_000,
        eval_rows=256, max_length=1024, max_prompt_length=512, truncation_mode="keep_end",
        chat=True, on_error="skip"))
    c.rest = ml_collections.ConfigDict(dict(
        grow_steps=2, improve_steps=4, samples=25, temperature=0.8, top_p=1.0,
        max_new_tokens=512, normalize="sigmoid", threshold_mode="global",
        thresholds=(0.7, 0.8, 0.9, 0.95, 0.99), bc_steps=300, improve_train_steps=1000,
        lr_decay=0.5, select="best", eval_every=100, eval_samples=2, shard_size=256,
        score_chunk=64, sample_batch=64))
    c.optim = ml_collections.ConfigDict(dict(
        optimizer="adamw", lr=1e-6, warmup_steps=10, decay="constant", grad_clip=1.0))
    c.batch_size = 64
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, model=1))
    # TPU slices the dry run sizes: (mesh, HBM per chip in GiB). v5p-16 is 8 chips.
    c.dry_run_meshes = {"v5p-16": dict(data=1, fsdp=8, model=1, hbm_gib=95),
                        "v5e-64": dict(data=1, fsdp=64, model=1, hbm_gib=16)}
    return c


def smoke():
    """Random 2-layer policy and reward model on toy data: BC, G=1 I=1, 4 steps a stage."""
    c = get_config()
    c.workdir = "results/rest_llama3_8b_smoke"
    c.tokenizer = "toy"
    tiny = dict(preset="bench-tiny", hf_path="", vocab_size=64, initializer_range=0.02,
                dtype="float32", param_dtype="float32", remat="none", scan_layers=True)
    c.model = ml_collections.ConfigDict(tiny)
    c.reward = ml_collections.ConfigDict(dict(tiny, tokenizer="", max_length=32,
                                              max_prompt_length=16, batch_size=16))
    # 16 held-out prompts x 2 samples: the shape of a grow batch (16 prompts x 2), so one
    # compiled sampler serves both; scanned layers compile faster.
    c.data = ml_collections.ConfigDict(dict(
        toy=True, toy_train=16, toy_eval=16, train="", eval="", train_rows=0, eval_rows=0,
        max_length=32, max_prompt_length=16, truncation_mode="keep_end", chat=False,
        on_error="raise"))
    # A random reward model scores near 0, sigma(r) ~ 0.5 is below every paper threshold:
    # the per-prompt percentile keeps an improve step with tau=0.7 non-empty.
    c.rest.update(grow_steps=1, improve_steps=1, samples=2, max_new_tokens=8,
                  normalize="percentile", bc_steps=4, improve_train_steps=4, eval_every=2,
                  eval_samples=2, shard_size=16, score_chunk=16, sample_batch=16)
    c.optim.update(lr=3e-3, warmup_steps=1)
    c.batch_size = 8
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.dry_run_meshes = {"cpu": dict(data=1, fsdp=1, model=1)}
    return c
