"""Token-selection rules, tested directly: empirical frequencies against the analytic truncated
distribution, the bisection nucleus against a sort-based one, log-probs, vocabulary masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.sampling import selection
from jaxalign.sampling.selection import Rule

LOGITS = np.array([2.0, 1.5, 1.2, 0.9, 0.3, -0.2, -1.0, -3.0], np.float32)
DRAWS = 40_000


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def analytic(logits, rule: Rule) -> np.ndarray:
    """The distribution sampled from, computed in numpy from a sort (HF's warpers, in order)."""
    z = np.asarray(logits, np.float64) / rule.temperature
    keep = np.ones(z.shape, bool)
    if rule.top_k:
        keep &= z >= np.sort(z)[::-1][rule.top_k - 1]
    if rule.top_p < 1:
        p = softmax(np.where(keep, z, -np.inf))
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]  # mass of strictly more likely tokens
        nucleus = np.zeros_like(keep)
        nucleus[order[before < rule.top_p]] = True
        keep &= nucleus
    if rule.min_p > 0:
        p = softmax(np.where(keep, z, -np.inf))
        keep &= p >= rule.min_p * p.max()
    return softmax(np.where(keep, z, -np.inf))


def draw(rule: Rule, n=DRAWS, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, LOGITS.size))
    fn = jax.jit(lambda k, z: selection.choose(k, z, rule))
    tokens, logprobs = fn(keys, logits)
    return np.asarray(tokens), np.asarray(logprobs)


RULES = [
    Rule(temperature=1.0),
    Rule(temperature=0.7),
    Rule(temperature=1.0, top_k=3),
    Rule(temperature=1.0, top_p=0.8),
    Rule(temperature=1.3, top_p=0.5),
    Rule(temperature=1.0, min_p=0.3),
    Rule(temperature=0.8, top_k=5, top_p=0.9, min_p=0.1),
]


@pytest.mark.parametrize("rule", RULES, ids=str)
def test_frequencies_match_truncated_distribution(rule):
    want = analytic(LOGITS, rule)
    tokens, logprobs = draw(rule)
    freq = np.bincount(tokens, minlength=LOGITS.size) / tokens.size
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(want))  # never outside the support
    tv = 0.5 * np.abs(freq - want).sum()
    # E[TV] for 40k draws over <= 8 outcomes is < 0.006; 0.015 is > 5 standard errors away.
    assert tv < 0.015, (tv, freq, want)
    np.testing.assert_allclose(logprobs, np.log(want[tokens]), atol=1e-5)


def test_greedy_is_argmax_with_zero_logprob_and_first_index_on_ties():
    logits = jnp.asarray([[0.0, 3.0, 3.0, 1.0], [5.0, -1.0, 2.0, 5.0]])
    tokens, logprobs = selection.choose(jax.random.split(jax.random.key(0), 2), logits,
                                        Rule(temperature=0))
    assert tokens.tolist() == [1, 0]
    assert logprobs.tolist() == [0.0, 0.0]


def test_nucleus_bisection_equals_sorted_cumsum():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (64, 1000)).astype(np.float32)
    for p in (0.05, 0.5, 0.9, 0.999):
        got = np.isfinite(np.asarray(selection.top_p_filter(jnp.asarray(logits), p)))
        want = np.stack([analytic(row, Rule(top_p=p)) > 0 for row in logits])
        assert (got == want).all(), p


def test_top_k_and_min_p_keep_exactly_the_expected_set():
    z = jnp.asarray(LOGITS)[None]
    assert np.isfinite(np.asarray(selection.top_k_filter(z, 3))).sum() == 3
    kept = np.isfinite(np.asarray(selection.min_p_filter(z, 0.5)))[0]
    p = softmax(LOGITS)
    assert (kept == (p >= 0.5 * p.max())).all()


def test_padded_vocabulary_is_never_chosen():
    logits = jnp.zeros((4096, 16)).at[:, 12:].set(10.0)  # padded rows would dominate
    masked = selection.mask_vocab(logits, 12)
    keys = jax.random.split(jax.random.key(1), 4096)
    tokens, _ = selection.choose(keys, masked, Rule(temperature=2.0))
    assert int(tokens.max()) < 12
    assert int(selection.argmax(masked).max()) < 12


@pytest.mark.parametrize("kw", [dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.1),
                                dict(temperature=-1.0), dict(min_p=1.0), dict(top_k=-2)])
def test_bad_rules_raise(kw):
    with pytest.raises(ValueError):
        Rule(**kw)
