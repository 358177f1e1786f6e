"""SPPO preference matrices: Bradley-Terry from scores, and the order-averaged pairwise judge."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.losses.sppo import win_rates_from_matrix, win_rates_from_scores
from jaxalign.reward import (PairwiseJudge, ScorePreferenceModel, bt_preference_matrix,
                             order_averaged)
from tests.reward.tiny_lm import CFG, PARAMS, TOKENIZER, next_token_logprobs_direct


def test_bt_matrix_is_exactly_sigmoid_of_differences():
    s = jax.random.normal(jax.random.key(0), (3, 5)) * 3
    P = np.asarray(jax.jit(bt_preference_matrix)(s))
    want = np.asarray(jax.nn.sigmoid(s[:, :, None] - s[:, None, :]))
    np.testing.assert_array_equal(P, want)  # same ops: bit for bit
    assert (P[:, np.arange(5), np.arange(5)] == 0.5).all()
    np.testing.assert_allclose(P, 1 / (1 + np.exp(-(np.asarray(s, np.float64)[:, :, None]
                                                     - np.asarray(s, np.float64)[:, None]))),
                               rtol=1e-6)
    # Fed to SPPO: the same win rates as from the scores themselves.
    a, b = win_rates_from_matrix(preferences_NxKxK=P), win_rates_from_scores(scores_NxK=s)
    np.testing.assert_array_equal(a.chosen_index, b.chosen_index)
    np.testing.assert_allclose(a.chosen_win_rate, b.chosen_win_rate, rtol=1e-6)


def test_score_preference_model_flattens_prompts_and_samples():
    seen = []

    def score_fn(prompts, completions):
        seen.append((list(prompts), list(completions)))
        return np.array([len(c) for c in completions], np.float32)

    P = ScorePreferenceModel(score_fn)(["p", "q"], [["a", "bbb"], ["cc", "d"]])
    assert seen == [(["p", "p", "q", "q"], ["a", "bbb", "cc", "d"])]
    np.testing.assert_array_equal(P, np.asarray(bt_preference_matrix(
        jnp.array([[1.0, 3.0], [2.0, 1.0]]))))


def test_order_averaging_is_exactly_complementary_and_removes_position_bias():
    q = np.random.default_rng(0).uniform(size=(200, 6, 6)).astype(np.float32)
    P = order_averaged(q)
    np.testing.assert_array_equal(P + np.swapaxes(P, -1, -2), np.ones_like(P))
    assert (P[:, np.arange(6), np.arange(6)] == 0.5).all()
    np.testing.assert_allclose(P[:, 1, 4], 0.5 * (q[:, 1, 4] + 1 - q[:, 4, 1]), atol=1e-7)
    # A judge that always prefers the response shown first says nothing: P = 1/2.
    np.testing.assert_array_equal(order_averaged(np.full((1, 3, 3), 0.9, np.float32)), 0.5)


def test_pairwise_judge_reads_a_vs_b_in_both_orders():
    template = "{prompt} then {a} or {b} which"
    judge = PairwiseJudge(CFG, PARAMS, TOKENIZER, template=template, token_a="good",
                          token_b="bad", max_length=64, min_bucket=32, batch_size=8)
    prompts = ["tell me about the city", "describe your garden"]
    samples = [["a good day", "the dark river", "we saw it"],
               ["a cold house", "kind and warm", "the sky is bright"]]
    P = judge(prompts, samples)
    assert P.shape == (2, 3, 3) and P.dtype == np.float32
    np.testing.assert_array_equal(P + np.swapaxes(P, -1, -2), np.ones_like(P))
    assert (P[:, np.arange(3), np.arange(3)] == 0.5).all()
    ids = judge.probe.token_ids
    assert ids == (TOKENIZER.convert_tokens_to_ids("good"), TOKENIZER.convert_tokens_to_ids("bad"))

    def q(n, i, j):  # p(A) / (p(A) + p(B)) from an unbatched full forward
        lp = next_token_logprobs_direct(template.format(prompt=prompts[n], a=samples[n][i],
                                                        b=samples[n][j]), ids)
        return 1 / (1 + np.exp(lp[1] - lp[0]))

    for n in range(2):
        for i in range(3):
            for j in range(i + 1, 3):
                np.testing.assert_allclose(P[n, i, j], 0.5 * (q(n, i, j) + 1 - q(n, j, i)),
                                           atol=1e-5)
    assert np.abs(P - 0.5).max() > 0.01  # a random judge still has opinions
    assert judge.probe.forward.fn._cache_size() == 1  # 12 prompts, one bucket, one compile
