"""Batched scoring: same tokens as the policy's data, order kept, buckets, mesh, normalisations."""

import jax
import numpy as np
import pytest

from jaxalign.data import Encoder, tokenize_example, toy
from jaxalign.losses.cgpo import calibrated_reward
from jaxalign.models.presets import preset
from jaxalign.reward import (RewardScorer, init_reward_params, make_score_fn, percentile_rank,
                             reward_scores, sigmoid_scale)
from jaxalign.sharding import make_mesh

CFG = preset("bench-tiny").replace(vocab_size=64, initializer_range=0.3, pad_token_id=0)
PARAMS = init_reward_params(CFG, jax.random.key(0))
_scores = jax.jit(reward_scores, static_argnums=0)


def _pairs(n, seed=0):
    rows = toy.preference_rows(n, seed)
    return [r["prompt"] for r in rows], [r["chosen" if i % 2 else "rejected"]
                                         for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def tokenizer():
    return toy.word_tokenizer()


def _scorer(tokenizer, **kw):
    kw = {"max_length": 32, "max_prompt_length": 16, "min_bucket": 16, "batch_size": 4, **kw}
    return RewardScorer(CFG, PARAMS, tokenizer, **kw)


def test_scores_equal_single_sequence_forwards_in_input_order(tokenizer):
    prompts, completions = _pairs(11)
    prompts[3] = "tell me about " * 8  # a long prompt: truncated as the policy's data is
    scorer = _scorer(tokenizer)
    got = scorer(prompts, completions)
    assert got.shape == (11,) and got.dtype == np.float32
    enc = Encoder(tokenizer)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        rec = tokenize_example("sft", {"prompt": p, "completion": c}, enc, max_length=32,
                               max_prompt_length=16)
        ids = np.concatenate([rec["prompt"], rec["completion"]])
        assert scorer.encode(p, c) == ids.tolist()
        assert ids[-1] == tokenizer.eos_token_id
        row, mask = np.zeros((1, 32), np.int32), np.zeros((1, 32), bool)
        row[0, :len(ids)], mask[0, :len(ids)] = ids, True
        want = _scores(CFG, PARAMS, row, mask)  # alone, in the largest bucket: one compile
        # float32 rounding only: a 1-row GEMM vs a 4-row one (equal shapes agree bit for
        # bit); |r| is up to ~7 with this init, hence a relative tolerance.
        np.testing.assert_allclose(got[i], np.asarray(want)[0], rtol=1e-5, atol=1e-6)
    assert np.ptp(got) > 0.1
    # Lengths 8..25 fill buckets 16 and 32: at most one compile each, none on a second call.
    assert scorer.forward.fn._cache_size() <= 2
    scorer(prompts[::-1], completions[::-1])
    assert scorer.forward.fn._cache_size() <= 2


def test_sharded_over_the_mesh_equals_one_device(tokenizer):
    assert jax.device_count() == 8
    prompts, completions = _pairs(13, seed=1)
    one = _scorer(tokenizer, batch_size=16)(prompts, completions)
    sharded = _scorer(tokenizer, batch_size=8, mesh=make_mesh(data=4, fsdp=2))
    got = sharded(prompts, completions)
    np.testing.assert_allclose(got, one, atol=1e-5)
    kernel = sharded.forward.params["model"]["layers"]["mlp"]["up"]["kernel"]
    assert kernel.sharding.spec[1] == "fsdp"  # params sharded by their logical axes


def test_normalisations_by_hand():
    r = np.array([0.0, 2.0, -1.0, 5.0, 5.0, 3.0, 7.0], np.float32)
    np.testing.assert_allclose(sigmoid_scale(r), 1 / (1 + np.exp(-r.astype(np.float64))),
                               rtol=1e-6)
    assert sigmoid_scale(np.array([-200.0, 200.0])).tolist() == [0.0, 1.0]
    groups = ["a", "a", "a", "b", "b", "b", "c"]
    # a: 0 -> 1/2, 2 -> 1, -1 -> 0; b: 5, 5 tie (1 lower + 1/2) / 2, 3 -> 0; c alone -> 1/2.
    np.testing.assert_allclose(percentile_rank(r, groups),
                               [0.5, 1.0, 0.0, 0.75, 0.75, 0.0, 0.5])


def test_score_fns_for_rest_and_cgpo():
    table = {("p", "x"): 1.0, ("p", "y"): 3.0, ("q", "x"): -2.0, ("p", "gold"): 2.0,
             ("q", "gold"): 0.5}
    calls = []

    def fake_scorer(prompts, completions):
        calls.append(len(prompts))
        return np.array([table[(p, c)] for p, c in zip(prompts, completions)], np.float32)

    prompts, completions = ["p", "q", "p"], ["x", "x", "y"]
    raw = make_score_fn(fake_scorer)(prompts, completions)
    np.testing.assert_array_equal(raw, [1.0, -2.0, 3.0])
    np.testing.assert_allclose(make_score_fn(fake_scorer, normalize="sigmoid")(
        prompts, completions), sigmoid_scale(raw))
    np.testing.assert_allclose(make_score_fn(fake_scorer, normalize="percentile")(
        prompts, completions), [0.0, 0.5, 1.0])
    calls.clear()
    calib = make_score_fn(fake_scorer, baseline={"p": "gold", "q": "gold"})(prompts, completions)
    assert calls == [3, 2]  # the baseline scored once per distinct prompt
    want = calibrated_reward(rewards=raw, baseline_rewards=np.array([2.0, 0.5, 2.0]))
    np.testing.assert_allclose(calib, want, rtol=1e-6)
    np.testing.assert_allclose(calib, 1 / (1 + np.exp(-np.array([-1.0, -2.5, 1.0]))), rtol=1e-6)
    with pytest.raises(ValueError, match="either `baseline` or `normalize`"):
        make_score_fn(fake_scorer, normalize="sigmoid", baseline={})
