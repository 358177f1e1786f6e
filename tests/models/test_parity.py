"""Logit parity with Hugging Face transformers (PyTorch, CPU) through our checkpoint import."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import Transformer
from jaxalign.models.hf import load_hf
from tests.models.hf_tiny import FAMILIES, hf_logits, left_padded_batch, make_hf_model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_ckpt(request, tmp_path_factory):
    model = make_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, str(path)


def test_logit_parity_left_padded(family_ckpt):
    family, hf_model, path = family_ckpt
    cfg, params = load_hf(path)
    assert cfg.family == family
    tokens, mask, positions = left_padded_batch()
    want = hf_logits(hf_model, tokens, mask, positions)
    got, _, _ = jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(tokens),
                                                jnp.asarray(positions), jnp.asarray(mask))
    got = np.asarray(got)
    assert got.dtype == np.float32
    assert want[mask].std() > 1.0, "logits near uniform: the test would not discriminate"
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-4, rtol=0)


def test_config_fields(family_ckpt):
    family, _, path = family_ckpt
    cfg, _ = load_hf(path)
    if family == "mistral":
        assert cfg.sliding_window == 3
    if family == "llama":
        assert cfg.rope_scaling.rope_type == "llama3" and cfg.num_kv_heads == 2
    if family == "qwen2":
        assert cfg.tie_word_embeddings and cfg.qkv_bias and not cfg.o_bias
