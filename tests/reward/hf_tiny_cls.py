"""Tiny random Hugging Face sequence classifiers (one label) built offline, for parity tests.

Same shapes and switches as tests/models/hf_tiny.py (GQA + llama3 rope, a sliding window
shorter than the sequences, Qwen2 biases, GPT-2), initializer range 0.3 so scores are far apart
and a wrong token, mask or position shows up. Token 0 is the pad token; rows never contain it.
"""

import numpy as np
import torch
import transformers as T

VOCAB, PAD = 96, 0
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=64, initializer_range=0.3,
               max_position_embeddings=64, num_labels=1, pad_token_id=PAD)

FAMILIES = {
    "llama": lambda **kw: T.LlamaForSequenceClassification(T.LlamaConfig(
        **{**_COMMON, **kw}, rope_theta=500.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "mistral": lambda **kw: T.MistralForSequenceClassification(T.MistralConfig(
        **{**_COMMON, **kw}, sliding_window=3)),
    "qwen2": lambda **kw: T.Qwen2ForSequenceClassification(T.Qwen2Config(
        **{**_COMMON, **kw}, tie_word_embeddings=True)),
    "gpt2": lambda **kw: T.GPT2ForSequenceClassification(T.GPT2Config(**{**dict(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.3,
        bos_token_id=1, eos_token_id=2, num_labels=1, pad_token_id=PAD), **kw})),
}


def make_hf_classifier(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return FAMILIES[family](**overrides).eval()


def padded_batch(side: str, seed: int = 0, batch: int = 4, length: int = 9):
    """Tokens (never PAD inside a row), mask and positions; rows of lengths 9, 6, 3, 9."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, (batch, length))
    mask = np.ones((batch, length), bool)
    for row in range(1, min(batch, 3)):
        if side == "right":
            mask[row, length - 3 * row:] = False
        else:
            mask[row, :3 * row] = False
    tokens[~mask] = PAD
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    return tokens, mask, positions


def hf_scores(model, tokens, mask, positions=None) -> np.ndarray:
    kw = {} if positions is None else {"position_ids": torch.tensor(positions)}
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens),
                    attention_mask=torch.tensor(mask.astype(np.int64)), **kw)
    return out.logits.float().numpy()[:, 0]
