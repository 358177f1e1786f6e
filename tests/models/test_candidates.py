"""Candidate mode: T alternatives for the next position scored in one call without copying the
cache, == each scored alone by a normal 1-token step; committing one == a normal step on it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import (ModelConfig, Transformer, commit_candidate, init_cache, init_params,
                             positions_from_mask, split_layers)

# Llama's code path (rotary positions, grouped KV heads) with a sliding window that cuts into
# the cached context: the candidates' mask is the subtle part.
CFG = ModelConfig(family="mistral", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                  num_kv_heads=1, intermediate_size=64, sliding_window=3, initializer_range=0.3)
# Gemma-2: a sliding (window 3) and a global layer, each with its own candidate mask, and the
# soft-capped attention of one-token steps (decode_attention) against T candidates at once.
GEMMA2 = ModelConfig(family="gemma2", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, intermediate_size=64, sliding_window=3,
                     initializer_range=0.3, tie_word_embeddings=True,
                     layer_types=("sliding_attention", "full_attention"), attn_logit_softcap=5.0,
                     final_logit_softcap=3.0, query_pre_attn_scalar=12.0,
                     hidden_activation="gelu_pytorch_tanh", norm_unit_offset=True,
                     post_norms=True, scale_embeddings=True)


@functools.partial(jax.jit, static_argnames=("cfg", "candidates"))
def _step(params, tokens, positions, mask, cache, *, cfg, candidates=False):
    return Transformer(cfg).apply({"params": params}, tokens, positions, mask, cache,
                                  candidates=candidates)


@pytest.mark.parametrize("per_layer", [False, True], ids=["stacked", "decode_layout"])
@pytest.mark.parametrize("cfg", [CFG, GEMMA2], ids=["mistral", "gemma2"])
def test_candidates_equal_separate_steps_and_commit_equals_a_normal_step(cfg, per_layer):
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(1))
    if per_layer:
        params = split_layers(params)
    B, P, K, S = 3, 6, 4, 16
    prompt = jax.random.randint(jax.random.key(2), (B, P), 0, cfg.vocab_size)
    mask = jnp.ones((B, P), bool).at[1, :2].set(False).at[2, :5].set(False)  # left padding
    positions = positions_from_mask(mask)
    cache = init_cache(cfg, B, S, per_layer=per_layer)
    _, cache, _ = _step(params, prompt, positions, mask, cache, cfg=cfg)
    # One decoded token, row 0 a finished (padding) row, so the cache has an invalid slot too.
    live = jnp.array([False, True, True])
    next_pos = jnp.where(live, mask.sum(-1), 0)[:, None]
    _, cache, _ = _step(params, jnp.full((B, 1), 7), next_pos, live[:, None], cache, cfg=cfg)
    pos_B = mask.sum(-1) + 1

    cand_BxK = jax.random.randint(jax.random.key(3), (B, K), 0, cfg.vocab_size)
    cand_pos = jnp.broadcast_to(pos_B[:, None], (B, K))
    logits, cand_cache, hidden = _step(params, cand_BxK, cand_pos, jnp.ones((B, K), bool),
                                       cache, cfg=cfg, candidates=True)
    assert int(cand_cache.index) == int(cache.index)
    np.testing.assert_array_equal(cand_cache.mask, cache.mask)
    for j in range(K):
        want, want_cache, want_hidden = _step(params, cand_BxK[:, j:j + 1], pos_B[:, None],
                                              jnp.ones((B, 1), bool), cache, cfg=cfg)
        np.testing.assert_allclose(logits[:, j], want[:, 0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(hidden[:, j], want_hidden[:, 0], atol=1e-5, rtol=0)

    choice_B = jnp.array([2, 0, 3])
    valid_B = jnp.array([True, True, False])
    got = jax.jit(commit_candidate)(cand_cache, choice_B, valid_B)
    chosen = jnp.take_along_axis(cand_BxK, choice_B[:, None], axis=1)
    _, want, _ = _step(params, chosen, pos_B[:, None], valid_B[:, None], cache, cfg=cfg)
    assert int(got.index) == int(want.index) == int(cache.index) + 1
    np.testing.assert_array_equal(got.mask, want.mask)
    used = int(want.index)  # slots past the index hold stale candidates: invalid, overwritten
    slots = lambda c: (jax.tree.map(lambda k: k[..., :used], c.k),  # keys [..., S]
                       jax.tree.map(lambda v: v[..., :used, :], c.v))  # values [..., S, H]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0),
                 slots(got), slots(want))

    # The next step reads the committed cache exactly as the normal one.
    nxt = jnp.full((B, 1), 11)
    a, _, _ = _step(params, nxt, pos_B[:, None] + 1, jnp.ones((B, 1), bool), got, cfg=cfg)
    b, _, _ = _step(params, nxt, pos_B[:, None] + 1, jnp.ones((B, 1), bool), want, cfg=cfg)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_candidates_need_a_cache():
    tokens = jnp.zeros((1, 2), jnp.int32)
    with pytest.raises(ValueError, match="needs a cache"):
        jax.eval_shape(lambda: Transformer(CFG).init(jax.random.key(0), tokens, tokens,
                                                     tokens == 0, candidates=True))
