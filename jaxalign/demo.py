"""A one-minute CPU demo of the foundation: Hugging Face checkpoint in, same model out.

    python -m jaxalign.demo

Builds a tiny random Llama (GQA, llama3 rope scaling) in transformers, saves it as a local
Hugging Face checkpoint, imports it with `load_hf`, checks logit parity against PyTorch on a
left-padded batch, then decodes greedily with jaxalign's compiled sampler and with
transformers' `generate` and compares the tokens. Needs torch (the test extra).
"""

from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def main() -> int:
    import torch
    import transformers

    from jaxalign.models import Transformer, positions_from_mask
    from jaxalign.models.hf import load_hf
    from jaxalign.sampling import Sampler

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
        initializer_range=0.3, rope_theta=500.0, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 32})).eval()
    with tempfile.TemporaryDirectory() as ckpt:
        hf.save_pretrained(ckpt)
        cfg, params = load_hf(ckpt)
    print(f"imported a {cfg.family} model: {cfg.num_layers} layers, {cfg.num_heads} heads, "
          f"{cfg.num_kv_heads} KV heads, rope {cfg.rope_scaling.rope_type}")

    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 128, n).tolist() for n in (5, 9, 3)]
    width = max(map(len, prompts))
    tokens = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(tokens, dtype=bool)
    for i, p in enumerate(prompts):  # left padding
        tokens[i, width - len(p):], mask[i, width - len(p):] = p, True
    ours, _, _ = jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(tokens),
                                                 positions_from_mask(jnp.asarray(mask)),
                                                 jnp.asarray(mask))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(int)),
                    position_ids=torch.tensor(np.maximum(mask.cumsum(-1) - 1, 0))).logits
    diff = float(np.abs(np.asarray(ours) - theirs.numpy())[mask].max())
    print(f"logit parity with transformers on a left-padded batch: max |diff| = {diff:.2e}")

    new = 24
    sampler = Sampler(cfg, params, max_len=64, stop_ids=())
    t0 = time.perf_counter()
    out = sampler(prompt_ids=prompts, max_new_tokens=new, temperature=0.0)
    t_ours = time.perf_counter() - t0
    with torch.no_grad():
        ref = hf.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(int)),
                          max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)
    ref = ref[:, width:].numpy()
    same = all((out.tokens[i, 0, :new] == ref[i]).all() for i in range(len(prompts)))
    for i, p in enumerate(prompts):
        print(f"prompt {p} -> {out.tokens[i, 0, :12].tolist()}...")
    print(f"greedy decoding, {len(prompts)} prompts x {new} tokens in {t_ours:.2f} s "
          f"(compile included): {'token-identical to' if same else 'DIFFERENT from'} "
          "transformers generate")
    return 0 if diff < 1e-4 and same else 1


if __name__ == "__main__":
    raise SystemExit(main())
