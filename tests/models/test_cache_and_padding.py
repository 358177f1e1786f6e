"""Left padding, the KV cache, scan/remat options and dtypes give the same model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import (ModelConfig, Transformer, init_cache, init_params, positions_from_mask,
                             split_layers)

CONFIGS = {
    "llama": ModelConfig(family="llama", vocab_size=64, hidden_size=32, num_layers=2,
                         num_heads=4, num_kv_heads=2, intermediate_size=64,
                         initializer_range=0.3),
    "mistral_window": ModelConfig(family="mistral", vocab_size=64, hidden_size=32, num_layers=2,
                                  num_heads=4, num_kv_heads=1, intermediate_size=64,
                                  sliding_window=3, initializer_range=0.3),
    "gpt2": ModelConfig(family="gpt2", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                        num_kv_heads=4, intermediate_size=128, tie_word_embeddings=True,
                        max_position_embeddings=32, initializer_range=0.3),
}


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, tokens, mask, cache=None):
    return Transformer(cfg).apply({"params": params}, tokens, positions_from_mask(mask), mask,
                                  cache)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_left_padding_matches_unpadded(name):
    cfg = CONFIGS[name]
    params = init_params(cfg, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (1, 7), 0, cfg.vocab_size)
    alone, _, _ = _forward(cfg, params, tokens, jnp.ones((1, 7), bool))
    padded = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), tokens], axis=1)
    mask = jnp.arange(11)[None] >= 4
    got, _, _ = _forward(cfg, params, padded, mask)
    np.testing.assert_allclose(got[:, 4:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("per_layer", [False, True], ids=["stacked", "decode_layout"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_then_decode_matches_full_forward(name, per_layer):
    cfg = CONFIGS[name]
    params = init_params(cfg, jax.random.key(1))
    B, P, N = 3, 5, 6
    tokens = jax.random.randint(jax.random.key(3), (B, P + N), 0, cfg.vocab_size)
    mask = jnp.ones((B, P + N), bool).at[1, :2].set(False).at[2, :4].set(False)
    full, _, _ = _forward(cfg, params, tokens, mask)
    step = jax.jit(lambda p, t, pos, m, c: Transformer(cfg).apply({"params": p}, t, pos, m, c))
    cache = init_cache(cfg, B, P + N + 2, per_layer=per_layer)
    if per_layer:  # what the sampler runs: one param tree and one cache buffer per layer
        params = split_layers(params)
        assert len(cache.k) == len(params["layers"]) == cfg.num_layers
    positions = positions_from_mask(mask)
    logits, cache, _ = step(params, tokens[:, :P], positions[:, :P], mask[:, :P], cache)
    outs = [logits]
    for t in range(P, P + N):
        logits, cache, _ = step(params, tokens[:, t:t + 1], positions[:, t:t + 1],
                                mask[:, t:t + 1], cache)
        outs.append(logits)
    assert int(cache.index) == P + N and cache.per_layer == per_layer
    np.testing.assert_allclose(jnp.concatenate(outs, 1)[mask], full[mask], atol=1e-5, rtol=0)


def test_sliding_window_limits_attention():
    cfg = CONFIGS["mistral_window"]
    params = init_params(cfg, jax.random.key(1))
    a = jax.random.randint(jax.random.key(4), (1, 10), 0, cfg.vocab_size)
    b = a.at[0, 0].set((a[0, 0] + 1) % cfg.vocab_size)  # differs only at position 0
    la, _, _ = _forward(cfg, params, a, jnp.ones((1, 10), bool))
    lb, _, _ = _forward(cfg, params, b, jnp.ones((1, 10), bool))
    # Two layers of window 3 see at most 4 positions back: position >= 5 cannot see position 0.
    np.testing.assert_array_equal(la[0, 5:], lb[0, 5:])
    assert np.abs(la[0, :3] - lb[0, :3]).max() > 1e-3


@pytest.mark.parametrize("scan,remat", [(True, "none"), (True, "full"), (False, "dots")])
def test_scan_and_remat_do_not_change_values_or_grads(scan, remat):
    base = CONFIGS["llama"]
    params = init_params(base, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(5), (2, 6), 0, base.vocab_size)
    mask = jnp.ones((2, 6), bool)

    def loss(p, cfg):
        logits, _, _ = _forward(cfg, p, tokens, mask)
        return jax.nn.log_softmax(logits).mean()

    want_v, want_g = jax.value_and_grad(loss)(params, base)
    got_v, got_g = jax.jit(jax.value_and_grad(loss), static_argnums=1)(
        params, base.replace(scan_layers=scan, remat=remat))
    np.testing.assert_allclose(got_v, want_v, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                 got_g, want_g)


def test_bfloat16_params_and_activations():
    cfg = CONFIGS["llama"].replace(dtype="bfloat16", param_dtype="bfloat16")
    params = init_params(cfg, jax.random.key(1))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    tokens = jnp.ones((2, 4), jnp.int32)
    logits, _, hidden = _forward(cfg, params, tokens, jnp.ones((2, 4), bool))
    assert logits.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
    ref, _, _ = _forward(CONFIGS["llama"], jax.tree.map(lambda x: x.astype(jnp.float32), params),
                         tokens, jnp.ones((2, 4), bool))
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(logits, ref, atol=0.15 * float(jnp.abs(ref).max()))


def test_hidden_only_skips_logits():
    cfg = CONFIGS["llama"]
    params = init_params(cfg, jax.random.key(1))
    tokens, mask = jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3), bool)
    logits, cache, hidden = jax.jit(lambda p: Transformer(cfg).apply(
        {"params": p}, tokens, positions_from_mask(mask), mask, return_logits=False))(params)
    assert logits is None and cache is None and hidden.shape == (1, 3, 32)
