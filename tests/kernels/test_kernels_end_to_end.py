"""The Pallas kernels inside the library (interpret mode on CPU): a DPO step with the fused
log-probs (`ModelConfig.logprob_impl="pallas"`) and greedy decoding with the decode-attention
kernel (`attention_impl="pallas"`) give what the XLA paths give, within float tolerance.

    .venv/bin/python -m pytest -q tests/kernels/test_kernels_end_to_end.py
"""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from jaxalign.algorithms.runner import resolve_model_config
from jaxalign.models import ModelConfig, init_params
from jaxalign.objectives import preference_objective
from jaxalign.sampling import Sampler
from jaxalign.train.step import init_state, make_train_step
from tests.train.batches import TINY, preference_batch

# Gemma-2's switches (attention and final soft-caps, query scalar, sliding/global layers) and
# grouped heads, so the decode kernel sees the cap and the window.
GEMMA2_TINY = ModelConfig(
    family="gemma2", vocab_size=48, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
    head_dim=8, intermediate_size=64, initializer_range=0.3, max_position_embeddings=64,
    query_pre_attn_scalar=12, sliding_window=3, attn_logit_softcap=5.0, final_logit_softcap=3.0,
    layer_types=("sliding_attention", "full_attention", "sliding_attention"),
    hidden_activation="gelu_pytorch_tanh", norm_unit_offset=True, post_norms=True,
    scale_embeddings=True, tie_word_embeddings=True)


def test_dpo_step_with_the_fused_logprob_kernel_equals_the_xla_step():
    cfg = GEMMA2_TINY  # the final soft-cap and the tied unembedding go through the kernel
    params = init_params(cfg, jax.random.key(0))
    batch = preference_batch(0, batch=4)

    def one_step(model_cfg):
        objective = preference_objective(model_cfg, loss_kwargs={"beta": 0.1}, ref_params=params)
        optimizer = optax.sgd(0.1)  # linear in the gradient (Adam's first step is its sign)
        step = jax.jit(make_train_step(objective, optimizer))
        return step(init_state(params, optimizer), batch, jax.random.key(1))

    xla_state, xla = one_step(cfg)  # logits path
    pallas_state, pallas = one_step(cfg.replace(logprob_impl="pallas"))
    assert int(pallas_state.step) == 1 and float(pallas["nonfinite"]) == 0
    for key in ("loss", "grad_norm", "reward_margin"):
        np.testing.assert_allclose(pallas[key], xla[key], rtol=2e-5, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 pallas_state.params, xla_state.params)


@pytest.mark.parametrize("cfg", [TINY, GEMMA2_TINY], ids=["llama", "gemma2"])
def test_greedy_decoding_with_the_decode_kernel_equals_the_xla_decode(cfg):
    params = init_params(cfg, jax.random.key(2))
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]  # left padding of different lengths
    kw = dict(prompt_ids=prompts, temperature=0.0, max_new_tokens=10, stop_ids=[])
    xla = Sampler(cfg, params, max_len=24, buckets=(8,))(**kw)
    pallas = Sampler(cfg.replace(attention_impl="pallas"), params, max_len=24, buckets=(8,))(**kw)
    np.testing.assert_array_equal(pallas.tokens, xla.tokens)
    np.testing.assert_allclose(pallas.model_logprobs, xla.model_logprobs, rtol=1e-5, atol=1e-5)


def test_the_config_selects_the_kernels_by_name():
    section = ml_collections.ConfigDict(dict(preset="bench-tiny", logprob_impl="pallas",
                                             attention_impl="pallas"))
    cfg = resolve_model_config(section)
    assert (cfg.logprob_impl, cfg.attention_impl) == ("pallas", "pallas")
    with pytest.raises(ValueError, match=r"ModelConfig.logprob_impl: unsupported 'triton'"):
        cfg.replace(logprob_impl="triton")
    with pytest.raises(ValueError, match=r"ModelConfig.attention_impl: unsupported 'flash'"):
        cfg.replace(attention_impl="flash")
