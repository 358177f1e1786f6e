"""CGPO: calibrated/constrained rewards, CRPG, CODPO and CRRAFT selection rules and losses."""

import math

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxalign.losses import cgpo

sigma = lambda x: 1 / (1 + math.exp(-x))
f32 = lambda x: np.asarray(x, np.float32)


def test_calibrated_and_constrained_reward_by_hand():
    r_calib = cgpo.calibrated_reward(rewards=f32([[2.0, 0.0, 1.0]]), baseline_rewards=f32([1.0]))
    np.testing.assert_allclose(r_calib, [[sigma(1), sigma(-1), 0.5]], rtol=1e-6)
    verdicts = np.array([[[1, 1], [1, 0], [0, 0]]], bool)  # [N=1, K=3, J=2]
    passes = cgpo.all_judges_pass(judge_verdicts_xJ=verdicts)
    np.testing.assert_array_equal(passes, [[True, False, False]])
    np.testing.assert_allclose(cgpo.constrained_reward(calibrated_rewards=r_calib, passes=passes),
                               [[sigma(1), 0.0, 0.0]], rtol=1e-6)


CRPG = dict(
    policy_logps_NxK=f32([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]]),
    ref_logps_NxK=f32([[-1.0, -3.0, -8.0, -4.0], [-1.0, -1.0, -1.0, -1.0]]),
    constrained_rewards_NxK=f32([[0.5, 0.8, 0.9, 0.7], [1.0, 1.0, 1.0, 1.0]]),
    mask_NxK=np.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool),  # second prompt fully masked
    kl_max=2.0,
)


def test_crpg_by_hand():
    loss, metrics = cgpo.crpg(**CRPG)
    # log ratios [0, 1, 5]: KL-clipped rewards [1 * 0.5, (1 - 1/2) * 0.8, max(1 - 5/2, 0) * 0.9].
    np.testing.assert_allclose(metrics["kl_clipped_reward"][0], [0.5, 0.4, 0.0, 0.0], rtol=1e-6)
    # Baseline = mean over the 3 valid responses = 0.3.
    advantage = [0.2, 0.1, -0.3, 0.0]
    np.testing.assert_allclose(metrics["advantage"][0], advantage, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(loss[0], [0.2 * 1, 0.1 * 2, -0.3 * 3, 0.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(loss[1], np.zeros(4))  # fully masked prompt: exactly 0
    loss_jit, _ = jax.jit(lambda a: cgpo.crpg(**a, kl_max=2.0))(
        {k: v for k, v in CRPG.items() if k != "kl_max"})
    np.testing.assert_allclose(loss_jit, loss, rtol=1e-6)
    # Gradient of the mean over valid samples: -(1/n) * advantage; none to the reference.
    n = CRPG["mask_NxK"].sum()
    mean_loss = lambda p, r: cgpo.crpg(**{**CRPG, "policy_logps_NxK": p, "ref_logps_NxK": r}
                                       )[0].sum() / n
    g_p, g_r = jax.grad(mean_loss, argnums=(0, 1))(CRPG["policy_logps_NxK"], CRPG["ref_logps_NxK"])
    np.testing.assert_allclose(g_p, [[-a / 3 for a in advantage], [0.0] * 4], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(g_r, np.zeros((2, 4)))


def test_crraft_gradients_float64():
    # (CRPG's gradient is a stop-gradient surrogate, checked analytically in test_crpg_by_hand;
    # a finite-difference check would also differentiate the KL-clipped reward.)
    with jax.enable_x64(True):
        r_calib, w = np.array([0.8, 0.5, 0.9]), np.array([1.0, 0.0, 1.0])
        check_grads(lambda p: cgpo.crraft(policy_logps=p, calibrated_rewards=r_calib,
                                          weight=w)[0], (np.array([-2.0, -3.0, -1.0]),),
                    order=1, modes=("rev",))


def select(rewards, passes, mask=None):
    return cgpo.codpo_select(rewards_NxK=f32(rewards), passes_NxK=np.array(passes, bool),
                             mask_NxK=None if mask is None else np.array(mask, bool))


def test_codpo_select_cases():
    out = select([[0.1, 0.9, 0.5, 0.3],    # mixed: a+ = 2 (0.9 fails), a- = 3 (lowest failing)
                  [0.1, 0.9, 0.5, 0.3],    # nothing passes: skipped
                  [0.4, 0.2, 0.7, 0.2],    # all pass: a- = lowest overall, first of the tie
                  [0.5, 0.5, 0.1, 0.1]],   # tie for a+: first index; a- tie: first index
                 [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(out.chosen_index)[[0, 2, 3]], [2, 2, 0])
    np.testing.assert_array_equal(np.asarray(out.rejected_index)[[0, 2, 3]], [3, 1, 2])
    np.testing.assert_array_equal(out.weight, [1.0, 0.0, 1.0, 1.0])


def test_codpo_select_mask_verdicts_and_single_response():
    # Masked-out response 1 has the best reward and passes: ignored. Row 2: one valid response.
    verdicts = np.array([[[1, 1], [1, 1], [1, 0], [1, 1]], [[1, 1], [0, 1], [0, 0], [1, 1]]], bool)
    out = cgpo.codpo_select(rewards_NxK=f32([[0.3, 0.9, 0.1, 0.2], [0.3, 0.9, 0.1, 0.2]]),
                            judge_verdicts_NxKxJ=verdicts,
                            mask_NxK=np.array([[1, 0, 1, 1], [1, 0, 0, 0]], bool))
    np.testing.assert_array_equal(out.chosen_index[0], 0)
    np.testing.assert_array_equal(out.rejected_index[0], 2)
    np.testing.assert_array_equal(out.weight, [1.0, 0.0])


def test_codpo_loss_by_hand_and_skipped_rows():
    # r_w = [1, 5], r_l = [-1, 0]; beta = 0.5, lambda = 0.2, |a+| = [2, 3]; weight [1, 0].
    args = dict(policy_chosen_logps=f32([-1.0, -2.0]), policy_rejected_logps=f32([-3.0, -4.0]),
                ref_chosen_logps=f32([-2.0, -7.0]), ref_rejected_logps=f32([-2.0, -4.0]),
                chosen_lengths=f32([2, 3]), weight=f32([1.0, 0.0]), beta=0.5, lambda_=0.2)
    loss, metrics = cgpo.codpo(**args)
    expected = math.log1p(math.exp(-1.0)) - 0.2 * (-1.0) / 2
    np.testing.assert_allclose(loss, [expected, 0.0], rtol=1e-6)
    np.testing.assert_allclose(metrics["chosen_reward"], [0.5, 2.5])
    grad = jax.grad(lambda pc: cgpo.codpo(**{**args, "policy_chosen_logps": pc})[0].sum())(
        args["policy_chosen_logps"])
    # d/d l_w = -beta sigma(-beta h) - lambda/|a+|; 0 for the skipped row.
    np.testing.assert_allclose(grad, [-0.5 * sigma(-1.0) - 0.1, 0.0], rtol=1e-6)


def crraft_select(rewards, passes, log_ratios, baseline_passes, kl_max=1.0):
    return cgpo.crraft_select(rewards_NxK=f32(rewards), passes_NxK=np.array(passes, bool),
                              log_ratios_NxK=f32(log_ratios), kl_max=kl_max,
                              baseline_passes_N=np.array(baseline_passes, bool))


def test_crraft_select_cases():
    out = crraft_select(
        rewards=[[0.3, 0.9, 0.6], [0.3, 0.9, 0.6], [0.3, 0.9, 0.6], [0.7, 0.2, 0.7],
                 [0.3, 0.9, 0.6]],
        passes=[[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 0]],
        log_ratios=[[0.1, 5.0, 0.2],       # best reward over the KL budget: a* = 2
                    [2.0, 3.0, 1.5],       # every sample over budget, baseline passes: a_bar
                    [2.0, 3.0, 1.5],       # every sample over budget, baseline fails: skip
                    [0.0, 0.0, 1.0],       # tie (0.7, 0.7; 1.0 <= KL_max kept): first index
                    [0.0, 0.0, 0.0]],      # nothing passes the judges, baseline passes
        baseline_passes=[1, 1, 0, 1, 1])
    np.testing.assert_array_equal(out.index, [2, 0, 0, 0, 0])
    np.testing.assert_array_equal(out.use_baseline, [False, True, False, False, True])
    np.testing.assert_array_equal(out.weight, [1.0, 1.0, 0.0, 1.0, 1.0])


def test_crraft_loss_by_hand():
    logp, r_calib, w = f32([-2.0, -3.0, -1.0]), f32([0.8, 0.5, 0.9]), f32([1.0, 1.0, 0.0])
    loss, metrics = cgpo.crraft(policy_logps=logp, calibrated_rewards=r_calib, weight=w)
    np.testing.assert_allclose(loss, [1.6, 1.5, 0.0], rtol=1e-6)
    total = lambda a, b: cgpo.crraft(policy_logps=a, calibrated_rewards=b, weight=w)[0].sum()
    g_logp, g_r = jax.grad(total, argnums=(0, 1))(logp, r_calib)
    np.testing.assert_allclose(g_logp, [-0.8, -0.5, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(g_r, np.zeros(3))  # R_calib is stop-gradiented
    np.testing.assert_array_equal(metrics["weight"], w)


def test_selection_jits():
    rewards, passes = f32([[0.1, 0.9, 0.5, 0.3]]), np.array([[1, 0, 1, 0]], bool)
    out = jax.jit(lambda r, p: cgpo.codpo_select(rewards_NxK=r, passes_NxK=p))(rewards, passes)
    assert (int(out.chosen_index[0]), int(out.rejected_index[0])) == (2, 3)
    out = jax.jit(lambda r, p, lr, b: cgpo.crraft_select(
        rewards_NxK=r, passes_NxK=p, log_ratios_NxK=lr, kl_max=1.0, baseline_passes_N=b))(
            rewards, passes, f32([[0.0, 0.0, 2.0, 0.0]]), np.array([True]))
    assert int(out.index[0]) == 0 and float(out.weight[0]) == 1.0


def test_cgpo_errors():
    with pytest.raises(ValueError, match="kl_max must be > 0"):
        cgpo.crpg(**{**CRPG, "kl_max": 0.0})
    with pytest.raises(ValueError, match="Give exactly one of"):
        cgpo.codpo_select(rewards_NxK=f32([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="Shapes must match"):
        cgpo.codpo_select(rewards_NxK=f32([[1.0, 2.0]]), passes_NxK=np.ones((1, 3), bool))
    with pytest.raises(ValueError, match="baseline_passes_N"):
        crraft_select([[0.1, 0.2]], [[1, 1]], [[0.0, 0.0]], [1, 1])
    with pytest.raises(ValueError, match="beta must be > 0"):
        cgpo.codpo(policy_chosen_logps=f32([0.0]), policy_rejected_logps=f32([0.0]),
                   ref_chosen_logps=f32([0.0]), ref_rejected_logps=f32([0.0]),
                   chosen_lengths=f32([1.0]), beta=-1.0, lambda_=0.1)
