"""Token/sequence log-probs: hand values, shift convention, masking, memory-lean == plain."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxalign.losses import logprobs

LOG = np.log


def test_token_logprobs_by_hand():
    # Row 0: softmax of log([1, 2, 3]) = [1/6, 2/6, 3/6]; row 1: uniform over 3.
    logits = jnp.array([[[LOG(1), LOG(2), LOG(3)], [0.0, 0.0, 0.0]]], jnp.float32)
    out = logprobs.token_logprobs(logits_BxTxV=logits, targets_BxT=jnp.array([[2, 1]]))
    np.testing.assert_allclose(out, [[math.log(0.5), math.log(1 / 3)]], rtol=1e-6)
    assert out.dtype == jnp.float32


def _probs_logits():
    # Position t holds log-probabilities p_t over V = 4 tokens.
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.5, 0.125, 0.125, 0.25],
                  [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]])
    return jnp.asarray(LOG(p)[None], jnp.float32)


def test_shift_alignment_and_mask():
    # tokens: 2 prompt tokens, 2 completion tokens, 1 pad with an out-of-range id.
    tokens = jnp.array([[3, 1, 2, 0, -100]])
    mask = jnp.array([[0, 0, 1, 1, 0]], bool)
    logps, m = jax.jit(lambda t, z, cm: logprobs.shifted_token_logprobs(
        tokens_BxT=t, logits_BxTxV=z, completion_mask_BxT=cm))(tokens, _probs_logits(), mask)
    # logits[1] predicts tokens[2] = 2 (p = 0.25); logits[2] predicts tokens[3] = 0 (p = 0.5).
    np.testing.assert_allclose(logps, [[0.0, math.log(0.25), math.log(0.5), 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(m, [[False, True, True, False]])
    seq = logprobs.sequence_logprobs(token_logps_BxT=logps, mask_BxT=m)
    np.testing.assert_allclose(seq.sum, [math.log(0.125)], rtol=1e-6)
    np.testing.assert_allclose(seq.mean, [math.log(0.125) / 2], rtol=1e-6)
    np.testing.assert_allclose(seq.length, [2.0])


def test_sequence_logprobs_fully_masked_row_is_zero_with_finite_grads():
    token_logps = jnp.array([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = jnp.array([[1, 0, 1], [0, 0, 0]], bool)
    seq = logprobs.sequence_logprobs(token_logps_BxT=token_logps, mask_BxT=mask)
    np.testing.assert_allclose(seq.sum, [-4.0, 0.0])
    np.testing.assert_allclose(seq.mean, [-2.0, 0.0])
    np.testing.assert_allclose(seq.length, [2.0, 0.0])
    grad = jax.grad(lambda x: logprobs.sequence_logprobs(token_logps_BxT=x, mask_BxT=mask)
                    .mean.sum())(token_logps)
    np.testing.assert_allclose(grad, [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])


def test_bf16_logits_accumulate_in_float32():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 6, 50)), jnp.bfloat16)
    tokens = rng.integers(0, 50, (2, 6))
    logps, _ = jax.jit(lambda z, t: logprobs.shifted_token_logprobs(
        tokens_BxT=t, logits_BxTxV=z, completion_mask_BxT=jnp.ones((2, 6), bool)))(logits, tokens)
    assert logps.dtype == jnp.float32
    x = np.asarray(logits, np.float64)
    ref = x - np.log(np.exp(x).sum(-1, keepdims=True))
    expected = np.take_along_axis(ref[:, :-1], np.asarray(tokens)[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(logps, expected, rtol=1e-5, atol=1e-5)


def _random_problem(T=11, D=6, V=37, seed=0):
    """B = 2: row 0 completion = positions 3.., row 1 = positions 5..T-3 (then padding)."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(2, T, D)).astype(np.float32)
    unembed = (rng.normal(size=(D, V)) / 2).astype(np.float32)
    bias = rng.normal(size=(V,)).astype(np.float32)
    tokens = rng.integers(0, V, (2, T)).astype(np.int32)
    pos = np.arange(T)
    mask = np.stack([pos >= 3, (pos >= 5) & (pos < T - 2)])
    return hidden, unembed, bias, tokens, mask


def _plain_sum(hidden, unembed, bias, tokens, mask):
    logits = jnp.einsum("btd,dv->btv", hidden, unembed) + bias
    logps, m = logprobs.shifted_token_logprobs(
        tokens_BxT=tokens, logits_BxTxV=logits, completion_mask_BxT=mask)
    return logprobs.sequence_logprobs(token_logps_BxT=logps, mask_BxT=m).sum


def _lean_sum(hidden, unembed, bias, tokens, mask, chunk_size=4, vocab_block=8):
    logps, m = logprobs.shifted_token_logprobs_from_hidden(
        tokens_BxT=tokens, hidden_BxTxD=hidden, unembed_DxV=unembed, bias_V=bias,
        completion_mask_BxT=mask, chunk_size=chunk_size, vocab_block=vocab_block)
    return logprobs.sequence_logprobs(token_logps_BxT=logps, mask_BxT=m).sum


@pytest.mark.parametrize("chunk_size,vocab_block", [(4, 8), (64, 37)])
def test_lean_equals_plain_values_and_grads(chunk_size, vocab_block):
    # T = 11 is not a multiple of 4, V = 37 not a multiple of 8: padding and remainder paths.
    hidden, unembed, bias, tokens, mask = _random_problem()

    def value_and_grads(f):
        weighted = lambda h, w, b: (f(h, w, b, tokens, mask) * jnp.array([1.0, -2.0])).sum()
        return jax.jit(jax.value_and_grad(weighted, argnums=(0, 1, 2)))(hidden, unembed, bias)

    v_plain, g_plain = value_and_grads(_plain_sum)
    v_lean, g_lean = value_and_grads(
        lambda *a: _lean_sum(*a, chunk_size=chunk_size, vocab_block=vocab_block))
    np.testing.assert_allclose(v_lean, v_plain, rtol=1e-5)
    for gp, gl in zip(g_plain, g_lean):
        np.testing.assert_allclose(gl, gp, rtol=1e-5, atol=1e-6)


def test_lean_without_bias_and_unshifted():
    hidden, unembed, _, tokens, _ = _random_problem()
    lean = jax.jit(lambda h, w, t: logprobs.token_logprobs_from_hidden(
        hidden_BxTxD=h, unembed_DxV=w, targets_BxT=t, chunk_size=3))(hidden, unembed, tokens)
    plain = jax.jit(lambda h, w, t: logprobs.token_logprobs(logits_BxTxV=h @ w, targets_BxT=t))(
        hidden, unembed, tokens)
    np.testing.assert_allclose(lean, plain, rtol=1e-5, atol=1e-6)


def test_lean_gradients_float64():
    # The custom VJP against finite differences (the plain path is plain autodiff).
    with jax.enable_x64(True):
        hidden, unembed, bias, tokens, mask = _random_problem(T=7, V=9)
        hidden, unembed, bias = (jnp.asarray(x, jnp.float64) for x in (hidden, unembed, bias))
        check_grads(jax.jit(lambda h, w, b: _lean_sum(h, w, b, tokens, mask, 3, 4)),
                    (hidden, unembed, bias), order=1, modes=("rev",))


def test_padding_invariance():
    hidden, unembed, bias, tokens, mask = _random_problem()
    pad = 5
    noise = np.random.default_rng(7).normal(size=(2, pad, hidden.shape[-1])).astype(np.float32)
    hidden_p = np.concatenate([hidden, noise], 1)
    tokens_p = np.concatenate([tokens, np.full((2, pad), -100, np.int32)], 1)
    mask_p = np.concatenate([mask, np.zeros((2, pad), bool)], 1)
    for f in (jax.jit(_plain_sum), jax.jit(_lean_sum)):
        np.testing.assert_allclose(f(hidden_p, unembed, bias, tokens_p, mask_p),
                                   f(hidden, unembed, bias, tokens, mask), rtol=1e-6)


def test_lean_compiled_temp_memory_is_smaller():
    B, T, D, V = 2, 256, 32, 8192
    args = (jax.ShapeDtypeStruct((B, T, D), jnp.float32), jax.ShapeDtypeStruct((D, V), jnp.float32),
            jax.ShapeDtypeStruct((V,), jnp.float32), jax.ShapeDtypeStruct((B, T), jnp.int32),
            jax.ShapeDtypeStruct((B, T), jnp.bool_))

    def temp(f):
        g = jax.jit(jax.value_and_grad(lambda *a: f(*a).sum(), argnums=(0, 1)))
        return g.lower(*args).compile().memory_analysis().temp_size_in_bytes

    plain = temp(_plain_sum)
    lean = temp(lambda *a: _lean_sum(*a, chunk_size=32, vocab_block=1024))
    assert plain > 4 * lean, (plain, lean)


def test_shape_errors():
    tokens = jnp.zeros((2, 5), jnp.int32)
    with pytest.raises(ValueError, match="same shape"):
        logprobs.shifted_token_logprobs(tokens_BxT=tokens, logits_BxTxV=jnp.zeros((2, 5, 3)),
                                        completion_mask_BxT=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="must start with"):
        logprobs.shifted_token_logprobs(tokens_BxT=tokens, logits_BxTxV=jnp.zeros((2, 4, 3)),
                                        completion_mask_BxT=jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="does not match hidden dim"):
        logprobs.token_logprobs_from_hidden(hidden_BxTxD=jnp.zeros((2, 5, 4)),
                                            unembed_DxV=jnp.zeros((3, 7)), targets_BxT=tokens)
    with pytest.raises(ValueError, match="chunk_size must be > 0"):
        logprobs.token_logprobs_from_hidden(hidden_BxTxD=jnp.zeros((2, 5, 4)),
                                            unembed_DxV=jnp.zeros((4, 7)), targets_BxT=tokens,
                                            chunk_size=0)
    with pytest.raises(ValueError, match="Shapes must match"):
        logprobs.sequence_logprobs(token_logps_BxT=jnp.zeros((2, 5)), mask_BxT=jnp.ones((2, 4)))
