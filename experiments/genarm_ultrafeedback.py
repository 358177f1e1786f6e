r"""GenARM's autoregressive reward model on UltraFeedback-binarized (Xu et al. 2024, the
weak-to-strong / AlpacaEval setup): a full fine-tune of Tulu2-7B, beta_r = 0.1, lr 5e-7,
3 epochs, batch 32, length 2048.

Validate shapes and memory without running (any machine, nothing allocated):
    python -m jaxalign --config experiments/genarm_ultrafeedback.py --dry_run
Train on a TPU slice:
    python -m jaxalign --config experiments/genarm_ultrafeedback.py \
        --config.model.hf_path=/ckpt/tulu-2-7b --config.tokenizer=/ckpt/tulu-2-7b \
        --config.data.train=/data/ultrafeedback_binarized/train_prefs.parquet \
        --config.data.eval=/data/ultrafeedback_binarized/test_prefs.parquet \
        --workdir /runs/genarm_uf
Tulu2's vocabulary has 32001 ids (a pad token added to Llama-2's 32000): the 7B ARM guides
Tulu2-7B/13B/70B bases that share it; a base with 32000 ids is refused by the sampler unless
`crop_vocab=True` (the official code's workaround; see jaxalign.sampling.sampler).
Not in the paper's text (our choices, stated): max prompt 1024, AdamW with 3% warmup and
linear decay, grad-norm clip 10, reference-free (the ARM's reward has no reference).
`smoke` shrinks it to a random 2-layer Llama on the toy preference set (CPU, seconds).
"""

from experiments import check_arg, genarm_hh_rlhf


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    c = genarm_hh_rlhf.get_config(arg)
    c.loss.kwargs.beta = 0.1
    c.lora.rank = 0  # full fine-tune
    if arg == "smoke":
        return c
    c.workdir = "results/genarm_ultrafeedback"
    c.model.update(dict(preset="llama-2-7b", vocab_size=32001, param_dtype="float32"))
    c.data.update(dict(max_length=2048, max_prompt_length=1024))
    # 3 epochs of the 61,135 train_prefs pairs at batch 32
    c.optim.update(dict(lr=5e-7, warmup_steps=172, total_steps=5732))
    c.loop.update(dict(total_steps=5732, micro_batches=8))
    c.dry_run_meshes = {"v5e-8": "v5litepod-8", "v5p-16": "v5p-16", "v5p-32": "v5p-32",
                        "v5p-64": "v5p-64"}
    # guided decoding sized at the ARM's length: prompts up to 1024 tokens, 1024 new (our
    # assumption; AlpacaEval answers), 32 prompts x 1 sample per batch
    c.dry_run_sampling.update(dict(max_len=2048, max_prompt_length=1024, max_new_tokens=1024))
    return c
