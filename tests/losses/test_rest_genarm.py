"""ReST thresholded NLL (scalar, BC, per-source percentiles) and the GenARM ARM loss."""

import math

import jax
import numpy as np
import pytest

from jaxalign.losses import genarm, rest

f32 = lambda x: np.asarray(x, np.float32)
LOGPS = f32([-1.0, -2.0, -3.0, -4.0])
REWARDS = f32([0.2, 0.8, 0.5, 0.9])


def test_thresholded_nll_by_hand():
    loss, metrics = rest.thresholded_nll(policy_logps=LOGPS, rewards=REWARDS, threshold=0.5)
    np.testing.assert_allclose(loss, [0.0, 2.0, 0.0, 4.0])  # 0.5 is not > 0.5
    np.testing.assert_array_equal(metrics["weight"], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(metrics["nll"], [1.0, 2.0, 3.0, 4.0])
    grad = jax.grad(lambda x: rest.thresholded_nll(policy_logps=x, rewards=REWARDS,
                                                   threshold=0.5)[0].sum())(LOGPS)
    np.testing.assert_allclose(grad, [0.0, -1.0, 0.0, -1.0])


def test_behaviour_cloning_and_mask():
    loss, metrics = rest.thresholded_nll(policy_logps=LOGPS, rewards=REWARDS, threshold=-np.inf,
                                         mask=np.array([1, 1, 0, 1], bool))
    np.testing.assert_allclose(loss, [1.0, 2.0, 0.0, 4.0])
    np.testing.assert_array_equal(metrics["weight"], [1.0, 1.0, 0.0, 1.0])


def test_per_source_percentile_thresholds():
    # Source 0 rewards [1, 2, 3] -> median 2; source 1 [10, 20, 30, 40] -> median 25 (linear);
    # source 2 has no example -> +inf.
    rewards = f32([1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 40.0])
    sources = np.array([0, 1, 0, 1, 0, 1, 1], np.int32)
    thresholds = rest.source_percentile_thresholds(
        rewards_N=rewards, source_ids_N=sources, num_sources=3, percentile=50.0)
    np.testing.assert_allclose(thresholds, [2.0, 25.0, np.inf])
    logps = -np.arange(1, 8, dtype=np.float32)
    loss, metrics = jax.jit(lambda lp, r, s: rest.thresholded_nll(
        policy_logps=lp, rewards=r, source_ids=s, percentile=50.0, num_sources=3))(
            logps, rewards, sources)
    np.testing.assert_array_equal(metrics["weight"], [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(loss, [0, 0, 0, 0, 5.0, 6.0, 7.0])
    np.testing.assert_allclose(metrics["threshold"], [2, 25, 2, 25, 2, 25, 25])


def test_rest_errors():
    with pytest.raises(ValueError, match="needs `threshold`"):
        rest.thresholded_nll(policy_logps=LOGPS, rewards=REWARDS)
    with pytest.raises(ValueError, match="either `threshold`"):
        rest.thresholded_nll(policy_logps=LOGPS, rewards=REWARDS, threshold=0.0, percentile=50.0)
    with pytest.raises(ValueError, match=r"percentile must be in \[0.0, 100.0\]"):
        rest.source_percentile_thresholds(rewards_N=REWARDS, source_ids_N=np.zeros(4, np.int32),
                                          num_sources=1, percentile=101.0)
    with pytest.raises(ValueError, match="Shapes must match"):
        rest.thresholded_nll(policy_logps=LOGPS, rewards=REWARDS[:3], threshold=0.0)


def test_genarm_by_hand():
    l_w, l_l = f32([-10.0, -4.0]), f32([-12.0, -2.0])
    loss, metrics = genarm.arm(policy_chosen_logps=l_w, policy_rejected_logps=l_l, beta=0.5)
    # -log sigma(beta_r (l_w - l_l)) = softplus(-beta_r (l_w - l_l)) = softplus([-1, 1]).
    np.testing.assert_allclose(loss, [math.log1p(math.exp(-1)), math.log1p(math.exp(1))],
                               rtol=1e-6)
    np.testing.assert_allclose(metrics["chosen_reward"], [-5.0, -2.0])
    loss_g, _ = genarm.arm(policy_chosen_logps=l_w, policy_rejected_logps=l_l, beta=0.5,
                           gamma=0.5)
    np.testing.assert_allclose(loss_g, [math.log1p(math.exp(-0.5)), math.log1p(math.exp(1.5))],
                               rtol=1e-6)
    grad = jax.grad(lambda x: genarm.arm(policy_chosen_logps=x, policy_rejected_logps=l_l,
                                         beta=0.5)[0].sum())(l_w)
    # d/d l_w = -beta_r sigma(-beta_r (l_w - l_l)).
    np.testing.assert_allclose(grad, [-0.5 / (1 + math.exp(1)), -0.5 / (1 + math.exp(-1))],
                               rtol=1e-6)
