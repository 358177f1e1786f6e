"""Tiny random Hugging Face models built offline, for parity tests.

Weights use a large initializer range (0.3) so logits are far from uniform and a wrong head,
rotation or mask shows up as a large difference.
"""

import numpy as np
import torch
import transformers as T

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=64, initializer_range=0.3,
               max_position_embeddings=64)

FAMILIES = {
    # GQA + llama3 rope scaling (original context 16 so all three frequency bands occur).
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(
        **_COMMON, rope_theta=500.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    # Sliding window shorter than the test sequences.
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**_COMMON, sliding_window=3)),
    # q/k/v biases and a tied head.
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**_COMMON, tie_word_embeddings=True)),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
        initializer_range=0.3, bos_token_id=0, eos_token_id=1)),
}


def make_hf_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return FAMILIES[family]().eval()


def left_padded_batch(seed: int = 0, batch: int = 3, length: int = 9):
    """Tokens, mask (0 = left padding) and HF-style position ids; rows of different lengths."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, VOCAB, (batch, length))
    mask = np.ones((batch, length), bool)
    for row in range(1, batch):
        mask[row, : 3 * row] = False
    tokens[~mask] = 0
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    return tokens, mask, positions


def hf_logits(model, tokens, mask, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                    position_ids=torch.tensor(positions))
    return out.logits.float().numpy()


# Gemma-2, small soft-caps so tanh bends the scores and logits, a window (3) shorter than the
# test prompts, layer types mixing both kinds (not just alternating), query_pre_attn_scalar
# (12) != head_dim (8), and random norm weights so the `(1 + w)` offset matters.
GEMMA2 = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, intermediate_size=64, initializer_range=0.3,
              max_position_embeddings=64, query_pre_attn_scalar=12, sliding_window=3,
              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
              attn_logit_softcapping=5.0, final_logit_softcapping=3.0, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)


def gemma2_config(**overrides):
    return T.Gemma2Config(**{**GEMMA2, **overrides})


def randomize_norms(model, seed: int = 0, std: float = 0.3):
    """Gemma's norm weights start at 0 (a scale of 1 + 0); random ones test the offset."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def make_gemma2(seed: int = 0, cls=None, **overrides):
    """A tiny random Gemma2ForCausalLM (or `cls`, e.g. Gemma2ForSequenceClassification), eager
    attention (transformers' reference), float32."""
    torch.manual_seed(seed)
    cfg = gemma2_config(**overrides)
    cfg._attn_implementation = "eager"
    model = (cls or T.Gemma2ForCausalLM)(cfg)
    return randomize_norms(model, seed).eval()
