"""Hand-made preference batches for training tests (no tokenizer needed)."""

import numpy as np

from jaxalign.models import ModelConfig

TINY = ModelConfig(family="llama", vocab_size=32, hidden_size=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, intermediate_size=64, initializer_range=0.1)


def preference_batch(seed: int, batch: int = 8, length: int = 12, prompt: int = 4) -> dict:
    """Random prompts; chosen completions use tokens 2..15, rejected 16..31; ragged lengths."""
    rng = np.random.default_rng(seed)
    out = {}
    for side, (lo, hi) in (("chosen", (2, 16)), ("rejected", (16, 32))):
        tokens = np.zeros((batch, length), np.int32)
        mask = np.zeros((batch, length), bool)
        loss_mask = np.zeros((batch, length), bool)
        for i in range(batch):
            n = rng.integers(length - 4, length + 1)
            tokens[i, :prompt] = rng.integers(2, 32, prompt)
            tokens[i, prompt:n] = rng.integers(lo, hi, n - prompt)
            mask[i, :n] = True
            loss_mask[i, prompt:n] = True
        out.update({f"{side}_tokens": tokens, f"{side}_mask": mask, f"{side}_loss_mask": loss_mask})
    out["index"] = np.arange(batch, dtype=np.int64) + seed * batch
    out["weight"] = np.ones(batch, np.float32)
    return out
