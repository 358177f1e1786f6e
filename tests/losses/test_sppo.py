"""SPPO losses and the win-rate construction of uclaml/SPPO (scripts/compute_prob.py)."""

import math

import jax
import numpy as np
import pytest

from jaxalign.losses import sppo

# r_w = [1, 0], r_l = [-1, 0.5]; beta = 0.5 so eta = 2.
LOGPS = dict(
    policy_chosen_logps=np.array([-1.0, -2.0], np.float32),
    policy_rejected_logps=np.array([-3.0, -1.5], np.float32),
    ref_chosen_logps=np.array([-2.0, -2.0], np.float32),
    ref_rejected_logps=np.array([-2.0, -2.0], np.float32),
)


def test_sppo_by_hand():
    loss, metrics = sppo.sppo(**LOGPS, chosen_win_rate=np.array([0.75, 0.6], np.float32),
                              rejected_win_rate=np.array([0.25, 0.3], np.float32), beta=0.5)
    # targets eta (P - 1/2): [0.5, 0.2] and [-0.5, -0.4].
    expected = [0.5 * ((1 - 0.5) ** 2 + (-1 + 0.5) ** 2), 0.5 * ((0 - 0.2) ** 2 + (0.5 + 0.4) ** 2)]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["chosen_reward"], [0.5, 0.0])
    np.testing.assert_allclose(metrics["rejected_reward"], [-0.5, 0.25])
    np.testing.assert_allclose(metrics["reward_accuracy"], [1.0, 0.0])


def test_sppo_single_by_hand():
    loss, _ = sppo.sppo_single(**LOGPS, pair_win_rate=np.array([0.9, 0.5], np.float32), beta=0.5)
    # target eta (P - 1/2) = [0.8, 0]: 1/2[(r_w - t)^2 + (r_l + t)^2].
    expected = [0.5 * ((1 - 0.8) ** 2 + (-1 + 0.8) ** 2), 0.5 * (0.0 ** 2 + 0.5 ** 2)]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_sppo_hard_by_hand():
    loss, _ = sppo.sppo_hard(**LOGPS, beta=0.5)
    # 1/(2 beta) = 1: (r_w - 1)^2 + (r_l + 1)^2.
    np.testing.assert_allclose(loss, [0.0, 1.0 + 1.5 ** 2], rtol=1e-6)


def test_analytic_gradient_of_sppo():
    # d/d l_w = r_w - eta (P_w - 1/2); d/d l_l = r_l - eta (P_l - 1/2).
    def total(pc, pr):
        return sppo.sppo(**{**LOGPS, "policy_chosen_logps": pc, "policy_rejected_logps": pr},
                         chosen_win_rate=np.array([0.75, 0.6], np.float32),
                         rejected_win_rate=np.array([0.25, 0.3], np.float32), beta=0.5)[0].sum()

    g_w, g_l = jax.grad(total, argnums=(0, 1))(LOGPS["policy_chosen_logps"],
                                               LOGPS["policy_rejected_logps"])
    np.testing.assert_allclose(g_w, [1 - 0.5, 0 - 0.2], rtol=1e-6)
    np.testing.assert_allclose(g_l, [-1 + 0.5, 0.5 + 0.4], rtol=1e-6)


def test_eta_1000_is_finite_and_about_1e5():
    zeros = np.zeros(4, np.float32)
    win = np.array([0.9, 0.8, 1.0, 0.6], np.float32)
    f = lambda pc: sppo.sppo(policy_chosen_logps=pc, policy_rejected_logps=zeros,
                             ref_chosen_logps=zeros, ref_rejected_logps=zeros,
                             chosen_win_rate=win, rejected_win_rate=1 - win, beta=1e-3)[0]
    loss = f(zeros)
    # At r = 0: 1/2 [eta^2 (P_w - 1/2)^2 + eta^2 (P_l - 1/2)^2] = 1e6 (P_w - 1/2)^2.
    np.testing.assert_allclose(loss, 1e6 * (win - 0.5) ** 2, rtol=1e-5)
    assert 1e4 < float(loss.max()) <= 2.5e5
    grad = jax.grad(lambda pc: f(pc).sum())(zeros)
    np.testing.assert_allclose(grad, -1000 * (win - 0.5), rtol=1e-5)


def test_win_rates_worked_example_k5():
    # exp(scores) = [3, 1, 6, 2, 4]: P_ij = sigma(s_i - s_j) = w_i / (w_i + w_j).
    w = [3.0, 1.0, 6.0, 2.0, 4.0]
    out = sppo.win_rates_from_scores(scores_NxK=np.log(np.array([w], np.float32)))
    assert int(out.chosen_index[0]) == 2 and int(out.rejected_index[0]) == 1
    # Row means over all 5 candidates, diagonal 1/2 included.
    p_w = (6 / 9 + 6 / 7 + 1 / 2 + 6 / 8 + 6 / 10) / 5
    p_l = (1 / 4 + 1 / 2 + 1 / 7 + 1 / 3 + 1 / 5) / 5
    np.testing.assert_allclose(out.chosen_win_rate, [p_w], rtol=1e-6)
    np.testing.assert_allclose(out.rejected_win_rate, [p_l], rtol=1e-6)
    np.testing.assert_allclose(out.pair_win_rate, [6 / 7], rtol=1e-6)


def test_win_rates_batched_ties_and_matrix_agree():
    scores = np.array([[0.0, 1.0, -1.0, 2.0, 0.5], [1.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
    out = sppo.win_rates_from_scores(scores_NxK=scores)
    np.testing.assert_array_equal(out.chosen_index, [3, 0])  # ties: first index
    np.testing.assert_array_equal(out.rejected_index, [2, 2])
    # The same probabilities as a matrix (with a wrong diagonal that must be reset to 1/2).
    prefs = 1 / (1 + np.exp(scores[:, None, :] - scores[:, :, None]))
    prefs[:, np.arange(5), np.arange(5)] = 0.9
    out_m = sppo.win_rates_from_matrix(preferences_NxKxK=prefs.astype(np.float32))
    for a, b in zip(out, out_m):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_win_rates_from_intransitive_matrix():
    # Rock-paper-scissors-like: rows are P(i > j); diagonal given as 0 and reset to 1/2.
    prefs = np.array([[[0.0, 0.9, 0.2], [0.1, 0.0, 0.6], [0.8, 0.4, 0.0]]], np.float32)
    out = sppo.win_rates_from_matrix(preferences_NxKxK=prefs)
    # Row means: [(0.5+0.9+0.2)/3, (0.1+0.5+0.6)/3, (0.8+0.4+0.5)/3] = [1.6, 1.2, 1.7]/3.
    assert int(out.chosen_index[0]) == 2 and int(out.rejected_index[0]) == 1
    np.testing.assert_allclose(out.chosen_win_rate, [1.7 / 3], rtol=1e-6)
    np.testing.assert_allclose(out.rejected_win_rate, [1.2 / 3], rtol=1e-6)
    np.testing.assert_allclose(out.pair_win_rate, [0.4], rtol=1e-6)


def test_win_rate_errors():
    with pytest.raises(ValueError, match="square"):
        sppo.win_rates_from_matrix(preferences_NxKxK=np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="rank 2"):
        sppo.win_rates_from_scores(scores_NxK=np.zeros(5))
    with pytest.raises(ValueError, match="needs chosen_win_rate"):
        sppo.sppo(**LOGPS, chosen_win_rate=None, rejected_win_rate=np.zeros(2), beta=0.1)
    assert math.isclose(float(sppo.sppo_hard(**LOGPS, beta=1.0)[0][0]), 0.5 ** 2 + 0.5 ** 2)
