"""Best-of-N: one score_fn call over every (prompt, sample), the argmax kept (first on ties)."""

import types

import jax
import numpy as np
import pytest

from jaxalign.reward import RewardScorer, init_reward_params, make_score_fn
from jaxalign.sampling import Sampler
from jaxalign.sampling.best_of_n import best_of_n, completions

# The reward model reads prompt + completion text: the sampled texts continue the prompts
# (with the space a word-level decoder drops before a sequence's first word).
TEXTS = ["the cat sat on the mat", "hello world", "one two three"]
KW = dict(n=4, temperature=1.5, max_new_tokens=6, seed=1)


@pytest.fixture(scope="module")
def sampler(llama, tokenizer):
    cfg, params = llama
    return Sampler(cfg, params, tokenizer, stop_ids=(), max_len=32, buckets=(16,))


def test_the_best_is_the_first_argmax_of_the_scores(sampler):
    calls = []

    def score_fn(prompts, texts):  # few distinct values: ties are common
        calls.append((list(prompts), list(texts)))
        return [float(len(t.split()) % 3 + t.count("the")) for t in texts]

    best = best_of_n(sampler, TEXTS, score_fn=score_fn, **KW)
    (prompts, texts), = calls
    assert prompts == [p for p in TEXTS for _ in range(4)]
    assert texts == [t for row in best.samples.texts for t in row]
    want = np.asarray(score_fn(prompts, texts), np.float32).reshape(3, 4)
    np.testing.assert_array_equal(best.all_scores, want)
    for p in range(3):
        first = next(j for j in range(4) if want[p, j] == want[p].max())
        assert best.index[p] == first and best.scores[p] == want[p].max()
        np.testing.assert_array_equal(best.tokens[p], best.samples.tokens[p, first])
        assert best.lengths[p] == best.samples.lengths[p, first]
        assert best.texts[p] == best.samples.texts[p][first]
    assert len(set(best.samples.texts[0])) > 1  # the samples differ: the choice means something


def test_with_a_reward_model_score_fn(llama, sampler, tokenizer):
    cfg, _ = llama
    rm = jax.jit(init_reward_params, static_argnums=0)(cfg, jax.random.key(2))
    scorer = RewardScorer(cfg, rm, tokenizer, max_length=32, max_prompt_length=16,
                          min_bucket=32)
    best = best_of_n(sampler, TEXTS, score_fn=make_score_fn(scorer), **KW)
    flat = [t for row in best.samples.texts for t in row]
    want = scorer([p for p in TEXTS for _ in range(4)], flat).reshape(3, 4)
    np.testing.assert_allclose(best.all_scores, want, rtol=1e-6)
    np.testing.assert_array_equal(best.index, want.argmax(1))


def test_token_completions_leave_out_the_stop_token():
    out = types.SimpleNamespace(  # the fields of a SampleOutput that completions() reads
        tokens=np.array([[[5, 2, 0], [6, 7, 8]]], np.int32), lengths=np.array([[2, 3]]),
        stop_reason=np.array([["stop", "length"]]), texts=None)
    assert completions(out) == [[5], [6, 7, 8]]


@pytest.mark.parametrize("score_fn,match", [
    (lambda p, c: [0.0] * (len(c) - 1), "expected \\[12\\]"),
    (lambda p, c: [float("nan")] + [0.0] * (len(c) - 1), "NaN"),
])
def test_bad_scores_raise(sampler, score_fn, match):
    with pytest.raises(ValueError, match=match):
        best_of_n(sampler, TEXTS, score_fn=score_fn, **KW)


def test_bad_n_raises_before_sampling(sampler):
    with pytest.raises(ValueError, match="n \\(samples per prompt\\)"):
        best_of_n(sampler, TEXTS, score_fn=lambda p, c: [], n=0)
