"""Greedy decoding is token-identical to transformers `generate` (PyTorch, CPU, float32)."""

import numpy as np
import pytest

from jaxalign.models.hf import load_hf
from jaxalign.sampling import Sampler
from tests.sampling import helpers
from tests.sampling.helpers import VOCAB, make_hf_model

NEW = 12
PROMPTS = [[5, 17, 9, 30, 11, 23, 8], [12, 40], [7, 7, 19, 33], [50]]  # ids < VOCAB


def hf_greedy(model, prompts):
    """Left-padded batch through HF generate; returns (new tokens [B, NEW], raw logits)."""
    return helpers.hf_greedy(model, prompts, NEW)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_matches_transformers_generate(family, tmp_path):
    model = make_hf_model(family, seed=3, eos=None)
    model.generation_config.eos_token_id = None
    model.save_pretrained(tmp_path)
    want, logits = hf_greedy(model, PROMPTS)
    assert want.shape == (len(PROMPTS), NEW)
    # The comparison means something only if no step is a near tie between two tokens.
    top2 = np.sort(logits, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-4

    cfg, params = load_hf(str(tmp_path))
    sampler = Sampler(cfg, params, stop_ids=())
    out = sampler(prompt_ids=PROMPTS, temperature=0.0, max_new_tokens=NEW)
    np.testing.assert_array_equal(out.tokens[:, 0], want)
    assert (out.lengths == NEW).all() and (out.stop_reason == "length").all()
    # The model log-probs are those of HF's logits at each step.
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    want_lp = np.take_along_axis(logits, want[..., None], -1)[..., 0] - lse
    np.testing.assert_allclose(out.model_logprobs[:, 0], want_lp, atol=1e-4)
    assert VOCAB == cfg.vocab_size
