r"""SPPO (Wu et al. 2024, arXiv 2405.00675) as the paper runs it: 3 self-play iterations over three
disjoint UltraFeedback prompt splits, K = 5 samples per prompt, on Mistral-7B-Instruct-v0.2
(the default), Llama-3-8B-Instruct (`:llama3_8b`) or Gemma-2-9B-It (`:gemma2_9b`).

Validate shapes and memory without running (any machine, nothing allocated, seconds):
    python -m jaxalign --config experiments/sppo_ultrafeedback.py --dry_run
    python -m jaxalign --config experiments/sppo_ultrafeedback.py:gemma2_9b --dry_run
Run on a TPU slice (checkpoints, tokenizers and prompt files on local disk or a mounted bucket):
    python -m jaxalign --config experiments/sppo_ultrafeedback.py \
        --config.model.hf_path=/ckpt/Mistral-7B-Instruct-v0.2 \
        --config.tokenizer=/ckpt/Mistral-7B-Instruct-v0.2 \
        --config.preference.hf_path=/ckpt/Skywork-Reward-Llama-3.1-8B-v0.2 \
        --config.preference.tokenizer=/ckpt/Skywork-Reward-Llama-3.1-8B-v0.2 \
        --config.data.splits='("/data/uf/split0.parquet","/data/uf/split1.parquet","/data/uf/split2.parquet")' \
        --workdir /runs/sppo_mistral7b
Smoke run (random 2-layer policy and reward model, toy prompts, CPU, about a minute):
    python -m jaxalign --config experiments/sppo_ultrafeedback.py:smoke --workdir /tmp/sppo

Official settings (uclaml/SPPO run scripts): K = 5 samples at temperature 0.7, top_p 0.9 (the
paper's text says 1.0 / 1.0), up to 2048 new tokens; the loss `sppo.sppo` with eta = 1000
(beta = 0.001); RMSprop, lr 5e-7, linear decay with 10% warm-up, global batch 64, 1 epoch per
iteration; max_length 1024, max_prompt_length 512; the reference of iteration t is a frozen copy
of its starting policy; 3 iterations over the UltraFeedback prompts split in three (~20k each;
the official datasets UCLA-AGI/data-mistral-7b-instruct-sppo-iter{1,2,3} hold them). The sampler's
cache is max_length, so a sample keeps at most 1024 - prompt tokens: what the official training
keeps of a longer one after its truncation.
Ours (not the paper's): the preference model. The official one, PairRM, is a DeBERTa
cross-encoder that jaxalign cannot load; these configs score with a public decoder reward model
(Skywork-Reward-Llama-3.1-8B, a LlamaForSequenceClassification) under the same Bradley-Terry
link P_ij = sigma(s_i - s_j). Float32 policy params with bf16 compute (RMSprop updates at
lr 5e-7 are lost in bf16 weights), bf16 reward model (frozen). Paper headline (AlpacaEval 2.0
LC win rate, base -> iter1 -> iter2 -> iter3): Mistral 17.11 -> 24.79 -> 26.89 -> 28.53,
Llama-3 22.92 -> 31.73 -> 35.15 -> 38.77, Gemma-2 45.08 -> 48.70 -> 50.93 -> 53.27; write the
answer files those benchmarks read with `python -m jaxalign.sampling.answers`. Runtime and
final numbers of a full run here: not measured yet.
"""

import ml_collections

from experiments import check_arg

POLICIES = {  # the dry run sizes the preset; a real run reads hf_path's config.json
    "mistral7b": "mistral-7b-instruct-v0.2",
    "llama3_8b": "llama-3-8b",  # Meta-Llama-3-8B-Instruct has Meta-Llama-3-8B's shapes
    "gemma2_9b": "gemma-2-9b",  # Gemma-2-9B-It has Gemma-2-9B's shapes
}


def get_config(arg: str = ""):
    check_arg(arg, ("", *POLICIES, "smoke"), __file__)
    if arg == "smoke":
        return smoke()
    name = arg or "mistral7b"
    c = ml_collections.ConfigDict()
    c.algorithm = "sppo"
    c.workdir = f"results/sppo_{name}"
    c.seed = 0
    c.start_over = False
    c.tokenizer = ""  # a local tokenizer directory, usually the policy checkpoint's
    c.model = ml_collections.ConfigDict(dict(
        preset=POLICIES[name], hf_path="", dtype="bfloat16", param_dtype="float32",
        remat="full", scan_layers=True))
    c.preference = ml_collections.ConfigDict(dict(
        kind="reward_model", preset="skywork-reward-llama-3.1-8b", hf_path="", tokenizer="",
        dtype="bfloat16", param_dtype="bfloat16", scan_layers=True, max_length=1280,
        max_prompt_length=768, batch_size=64))
    c.data = ml_collections.ConfigDict(dict(
        toy=False, toy_prompts=0, splits=("", "", ""), split_rows=0, max_length=1024,
        max_prompt_length=512, chat=True, on_error="skip"))
    c.sppo = ml_collections.ConfigDict(dict(
        iterations=3, samples=5, temperature=0.7, top_p=0.9, max_new_tokens=2048,
        loss="sppo.sppo", eta=1000.0, beta=0.1, epochs=1.0, warmup_ratio=0.1, shard_size=256,
        score_chunk=64, sample_batch=32, checkpoint_every=100))
    c.optim = ml_collections.ConfigDict(dict(optimizer="rmsprop", lr=5e-7, decay="linear",
                                             grad_clip=0.0))
    c.batch_size = 64
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, model=1))
    # TPU slices the dry run sizes (jaxalign.models.slices: chips and HBM from the name; fsdp
    # over all chips). v5e-8 = v5litepod-8: 8 chips, 16 GiB each; v5p-16 is 8 chips, v5p-64 32.
    c.dry_run_meshes = {"v5e-8": "v5litepod-8", "v5p-16": "v5p-16", "v5p-64": "v5p-64",
                        "v5e-64": "v5litepod-64"}
    return c


def smoke():
    """Random 2-layer policy and reward model on toy prompts: 2 iterations of 16 prompts."""
    c = get_config()
    c.workdir = "results/sppo_smoke"
    c.tokenizer = "toy"
    tiny = dict(preset="bench-tiny", hf_path="", vocab_size=64, initializer_range=0.02,
                dtype="float32", param_dtype="float32", remat="none", scan_layers=True)
    c.model = ml_collections.ConfigDict(tiny)
    c.preference = ml_collections.ConfigDict(dict(tiny, kind="reward_model", tokenizer="",
                                                  max_length=32, max_prompt_length=16,
                                                  batch_size=32))
    c.data = ml_collections.ConfigDict(dict(
        toy=True, toy_prompts=16, splits=(), split_rows=0, max_length=32,
        max_prompt_length=16, chat=False, on_error="raise"))
    c.sppo.update(iterations=2, samples=3, max_new_tokens=8, score_chunk=16, sample_batch=16,
                  checkpoint_every=4)
    c.optim.update(lr=1e-3)
    c.batch_size = 8
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.dry_run_meshes = {"cpu": dict(data=1, fsdp=1, model=1)}
    return c
