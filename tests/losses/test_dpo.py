"""DPO family: hand-computed values, metrics, limits, stability, analytic gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import dpo


def sp(z):
    """softplus(z) = log(1 + e^z) = -log sigma(-z), by hand."""
    return math.log1p(math.exp(z))


# Two pairs: r_w = [1, -1], r_l = [-1, 1], so h = [2, -2]; beta = 0.5 gives beta h = [1, -1].
PAIR = dict(
    policy_chosen_logps=np.array([-1.0, -4.0], np.float32),
    policy_rejected_logps=np.array([-3.0, -2.0], np.float32),
    ref_chosen_logps=np.array([-2.0, -3.0], np.float32),
    ref_rejected_logps=np.array([-2.0, -3.0], np.float32),
    chosen_lengths=np.array([2, 4], np.int32),
    rejected_lengths=np.array([1, 2], np.int32),
)
Z = [1.0, -1.0]


def check(loss_and_metrics, expected_loss, **expected_metrics):
    loss, metrics = loss_and_metrics
    assert loss.dtype == jnp.float32 and loss.shape == (2,)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6, atol=1e-7)
    for k, v in expected_metrics.items():
        np.testing.assert_allclose(metrics[k], v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_sigmoid_by_hand():
    check(dpo.sigmoid(**PAIR, beta=0.5), [sp(-1), sp(1)], chosen_reward=[0.5, -0.5],
          rejected_reward=[-0.5, 0.5], reward_margin=[1.0, -1.0], reward_accuracy=[1.0, 0.0])


def test_cdpo_by_hand():
    expected = [0.9 * sp(-z) + 0.1 * sp(z) for z in Z]
    check(dpo.cdpo(**PAIR, beta=0.5, label_smoothing=0.1), expected, chosen_reward=[0.5, -0.5])


def test_robust_by_hand():
    expected = [(0.9 * sp(-z) - 0.1 * sp(z)) / 0.8 for z in Z]
    check(dpo.robust(**PAIR, beta=0.5, label_smoothing=0.1), expected, reward_margin=[1.0, -1.0])


def test_ipo_summed_by_hand():
    # (h - 1/(2 beta))^2 = (h - 1)^2 for h = 2, -2.
    check(dpo.ipo(**PAIR, beta=0.5), [1.0, 9.0], chosen_reward=[0.5, -0.5])


def test_ipo_length_normalized_by_hand():
    # r_w/|y_w| - r_l/|y_l| = [1/2 + 1, -1/4 - 1/2] = [1.5, -0.75]; minus 1/(2 beta) = 1.
    check(dpo.ipo_length_normalized(**PAIR, beta=0.5), [0.25, 3.0625],
          chosen_reward=[0.25, -0.125], rejected_reward=[-0.5, 0.25])


def test_hinge_by_hand():
    check(dpo.hinge(**PAIR, beta=0.5), [0.0, 2.0], reward_accuracy=[1.0, 0.0])


def test_reference_free_by_hand():
    # beta (l_w - l_l) = 0.5 * [2, -2]; rewards beta * l.
    check(dpo.reference_free(**PAIR, beta=0.5), [sp(-1), sp(1)], chosen_reward=[-0.5, -2.0],
          rejected_reward=[-1.5, -1.0], reward_accuracy=[1.0, 0.0])


def test_simpo_by_hand():
    # lbar_w = [-1/2, -4/4], lbar_l = [-3/1, -2/2]; beta (lbar_w - lbar_l - 0.25) = [4.5, -0.5].
    check(dpo.simpo(**PAIR, beta=2.0, gamma_beta_ratio=0.25), [sp(-4.5), sp(0.5)],
          chosen_reward=[-1.0, -2.0], rejected_reward=[-6.0, -2.0], reward_margin=[5.0, 0.0],
          reward_accuracy=[1.0, 0.5])  # an exact tie counts 1/2


def test_orpo_by_hand():
    log_odds = lambda x: x - math.log(1 - math.exp(x))
    lbar_w, lbar_l = [-0.5, -1.0], [-3.0, -1.0]
    ratio = [log_odds(w) - log_odds(l) for w, l in zip(lbar_w, lbar_l)]
    expected = [-w + 0.1 * sp(-r) for w, r in zip(lbar_w, ratio)]
    check(dpo.orpo(**PAIR, beta=0.1), expected, chosen_reward=[-0.05, -0.1],
          rejected_reward=[-0.3, -0.1], nll=[0.5, 1.0], log_odds_ratio=ratio)


def test_analytic_gradient_of_sigmoid():
    # d/d l_w [-log sigma(beta h)] = -beta sigma(-beta h); d/d l_l = +beta sigma(-beta h).
    def total(pc, pr):
        return dpo.sigmoid(**{**PAIR, "policy_chosen_logps": pc, "policy_rejected_logps": pr},
                           beta=0.5)[0].sum()

    g_c, g_r = jax.grad(total, argnums=(0, 1))(PAIR["policy_chosen_logps"],
                                               PAIR["policy_rejected_logps"])
    sig = [1 / (1 + math.exp(z)) for z in Z]
    np.testing.assert_allclose(g_c, [-0.5 * s for s in sig], rtol=1e-6)
    np.testing.assert_allclose(g_r, [0.5 * s for s in sig], rtol=1e-6)


def test_dpo_at_zero_margin_is_log2():
    zeros = np.zeros(3, np.float32)
    logps = dict(policy_chosen_logps=zeros - 2, policy_rejected_logps=zeros - 5,
                 ref_chosen_logps=zeros - 2, ref_rejected_logps=zeros - 5)
    for fn in (dpo.sigmoid, dpo.cdpo, dpo.robust):
        np.testing.assert_allclose(fn(**logps, beta=0.3)[0], [math.log(2)] * 3, rtol=1e-6)


def test_zero_eps_equals_dpo():
    base = dpo.sigmoid(**PAIR, beta=0.5)[0]
    np.testing.assert_allclose(dpo.cdpo(**PAIR, beta=0.5, label_smoothing=0.0)[0], base)
    np.testing.assert_allclose(dpo.robust(**PAIR, beta=0.5, label_smoothing=0.0)[0], base)


@pytest.mark.parametrize("fn", [dpo.ipo, dpo.ipo_length_normalized])
def test_ipo_minimised_at_half_inverse_beta(fn):
    beta = 0.25  # minimum at h = 1/(2 beta) = 2 (length-normalised: per-token log-ratios)
    ones = np.ones(1, np.float32)

    def loss(h):
        return fn(policy_chosen_logps=h * ones, policy_rejected_logps=0 * ones,
                  ref_chosen_logps=0 * ones, ref_rejected_logps=0 * ones,
                  chosen_lengths=ones, rejected_lengths=ones, beta=beta)[0][0]

    assert float(loss(2.0)) == 0.0
    assert float(jax.grad(loss)(2.0)) == 0.0
    assert loss(1.9) > 0 and loss(2.1) > 0


def test_orpo_stable_when_average_logprob_near_zero():
    # lbar within 1e-8 of 0 (and exactly 0): log(1 - exp(lbar)) would be log(0) = -inf.
    for lbar_w in (-1e-8, -1e-9, 0.0):
        pc = np.array([lbar_w * 3, lbar_w * 3], np.float32)
        pr = np.array([-2.0, lbar_w * 5], np.float32)
        lengths = dict(chosen_lengths=np.array([3, 3]), rejected_lengths=np.array([2, 5]))
        f = lambda pc, pr: dpo.orpo(policy_chosen_logps=pc, policy_rejected_logps=pr,
                                    **lengths, beta=0.1)[0].sum()
        value, grads = jax.value_and_grad(f, argnums=(0, 1))(pc, pr)
        assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads), lbar_w
    # Value near 0: log1mexp(-1e-8) = log(1e-8) (exact to float32 precision).
    np.testing.assert_allclose(dpo.log1mexp(jnp.float32(-1e-8)), math.log(1e-8), rtol=1e-6)


def test_fully_empty_completions_are_finite():
    zeros = np.zeros(2, np.float32)
    args = dict(policy_chosen_logps=zeros, policy_rejected_logps=zeros,
                chosen_lengths=zeros, rejected_lengths=zeros, beta=1.0)
    for fn in (dpo.simpo, dpo.orpo):
        loss, grads = jax.value_and_grad(
            lambda pc: fn(**{**args, "policy_chosen_logps": pc})[0].sum())(zeros)
        assert np.isfinite(loss) and np.isfinite(grads).all()


def test_reward_accuracy_counts_ties_as_half():
    zeros = jnp.zeros(3)
    _, metrics = dpo.sigmoid(policy_chosen_logps=jnp.array([-1.0, -2.0, -3.0]),
                             policy_rejected_logps=jnp.array([-2.0, -2.0, -1.0]),
                             ref_chosen_logps=zeros, ref_rejected_logps=zeros, beta=0.1)
    np.testing.assert_array_equal(metrics["reward_accuracy"], [1.0, 0.5, 0.0])
