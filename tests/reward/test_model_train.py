"""The reward model's read-out, the Bradley-Terry loss, and BT training on the toy set."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from experiments import reward_toy
from jaxalign.main import run_config
from jaxalign.models import ModelConfig
from jaxalign.objectives import bradley_terry_loss, bradley_terry_objective
from jaxalign.reward import (init_reward_params, last_token_index, reward_logical_axes,
                             reward_param_shapes, reward_scores)

CFG = ModelConfig(family="llama", vocab_size=32, hidden_size=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, intermediate_size=64, initializer_range=0.3, pad_token_id=0)
_scores = jax.jit(reward_scores, static_argnums=0)
_init = jax.jit(init_reward_params, static_argnums=0)


def test_last_token_index_by_hand():
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(last_token_index(jnp.asarray(mask)), [2, 4, 0, 0])


def test_params_have_no_lm_head_and_axes_match():
    params = jax.eval_shape(lambda k: init_reward_params(CFG, k), jax.random.key(0))
    assert "lm_head" not in params["model"]
    assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(
        lambda x: x.shape, reward_param_shapes(CFG))
    axes = reward_logical_axes(CFG)
    assert jax.tree.structure(jax.tree.map(lambda _: 0, axes, is_leaf=lambda a: isinstance(
        a, tuple))) == jax.tree.structure(jax.tree.map(lambda _: 0, params))


def test_padding_side_and_batch_order_do_not_change_scores():
    params = _init(CFG, jax.random.key(1))
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 32, n) for n in (7, 3, 5, 7)]
    T = 8
    right, left = np.zeros((4, T), np.int32), np.zeros((4, T), np.int32)
    rmask, lmask = np.zeros((4, T), bool), np.zeros((4, T), bool)
    for i, r in enumerate(rows):
        right[i, :len(r)], rmask[i, :len(r)] = r, True
        left[i, T - len(r):], lmask[i, T - len(r):] = r, True
    s_right = np.asarray(_scores(CFG, params, right, rmask))
    s_left = np.asarray(_scores(CFG, params, left, lmask))
    np.testing.assert_allclose(s_left, s_right, atol=1e-5)
    assert np.ptp(s_right) > 0.1
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(np.asarray(_scores(CFG, params, right[perm], rmask[perm])),
                               s_right[perm], atol=1e-5)
    # One row alone (no padding at all) scores the same as inside the batch.
    alone = np.asarray(_scores(CFG, params, rows[1][None].astype(np.int32),
                               np.ones((1, 3), bool)))
    np.testing.assert_allclose(alone, s_right[1:2], atol=1e-5)


def test_bradley_terry_loss_by_hand_and_gradients():
    r_w = jnp.array([2.0, 0.0, -1.0, 300.0])
    r_l = jnp.array([1.0, 0.0, 1.0, -300.0])
    loss, m = bradley_terry_loss(chosen_rewards=r_w, rejected_rewards=r_l)
    want = [np.log1p(np.exp(-1.0)), np.log(2.0), np.log1p(np.exp(2.0)), 0.0]
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_array_equal(m["reward_accuracy"], [1.0, 0.5, 0.0, 1.0])
    with_margin, _ = bradley_terry_loss(chosen_rewards=r_w, rejected_rewards=r_l,
                                        margin=jnp.array([1.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(with_margin[0], np.log(2.0), rtol=1e-6)  # -log sigma(2 - 1 - 1)
    check_grads(lambda a, b: bradley_terry_loss(chosen_rewards=a, rejected_rewards=b,
                                                margin=0.5)[0].sum(),
                (r_w[:3], r_l[:3]), order=2, modes=("rev",))


def test_objective_reads_the_batch_margin():
    params = _init(CFG, jax.random.key(2))
    tokens = np.array([[1, 5, 7, 0], [1, 9, 0, 0]], np.int32)
    mask = tokens > 0
    batch = dict(chosen_tokens=tokens, chosen_mask=mask, rejected_tokens=tokens[::-1],
                 rejected_mask=mask[::-1], weight=np.ones(2, np.float32))
    obj = jax.jit(bradley_terry_objective(CFG))
    loss0, w, m = obj(params, batch, None)
    loss1, _, _ = obj(params, {**batch, "margin": np.array([1.0, 1.0], np.float32)}, None)
    r = np.asarray(_scores(CFG, params, np.concatenate([tokens, tokens[::-1]]),
                           np.concatenate([mask, mask[::-1]])))
    np.testing.assert_allclose(loss0, np.logaddexp(0, -(r[:2] - r[2:])), rtol=1e-5)
    np.testing.assert_allclose(loss1, np.logaddexp(0, -(r[:2] - r[2:] - 1)), rtol=1e-5)
    np.testing.assert_array_equal(w, [1.0, 1.0])


def test_bradley_terry_training_on_the_toy_set(tmp_path):
    config = reward_toy.get_config("smoke")
    config.workdir = str(tmp_path)
    config.loop.progress_bar = False
    out = run_config(config)  # the entry point's dispatch: algorithm "reward_bt"
    print(f"held-out pairwise accuracy {out['initial_eval_accuracy']:.3f} -> "
          f"{out['eval_accuracy']:.3f}")
    assert out["eval_accuracy"] >= 0.9
    assert out["eval_accuracy"] > out["initial_eval_accuracy"] + 0.3
