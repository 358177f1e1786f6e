"""SPPO's loop pieces without a model: settings, prompt splits, the preference step's checks,
the rows built from a matrix (against `losses.win_rates_from_matrix`), the objective's columns.
The end-to-end run on the gym is tests/gym/test_sppo.py."""

import numpy as np
import pytest

from jaxalign.algorithms.sppo import (SppoSettings, check_splits, pair_rows,
                                      preference_score_step, sppo_settings)
from jaxalign.losses import win_rates_from_matrix
from jaxalign.models import ModelConfig
from jaxalign.objectives import preference_objective


def _groups(n, K, same_tokens=False):
    return [[{"id": f"p{i}", "prompt": f"prompt {i}", "prompt_tokens": [1, 5 + i],
              "tokens": [7, 2] if same_tokens else [10 + j, 2], "completion": f" y{i}.{j}",
              "_loc": f"iter_000/grow/shard-00000-of-00001.jsonl:{i * K + j + 1}"}
             for j in range(K)] for i in range(n)]


def _random_matrix(rng, n, K):
    upper = rng.uniform(size=(n, K, K))
    P = np.triu(upper, 1)
    return P + np.tril(1 - P.transpose(0, 2, 1), -1) + 0.5 * np.eye(K)


BAD = [
    ("k_below_2", lambda: SppoSettings(samples=1), r"sppo.samples must be an integer >= 2"),
    ("unknown_key", lambda: sppo_settings({"sample": 5}), r"unknown keys \['sample'\]"),
    ("loss_family", lambda: SppoSettings(loss="rest.thresholded_nll"), r"sppo.loss"),
    ("eta_zero", lambda: SppoSettings(eta=0.0), r"sppo.eta must be a positive"),
    ("shared_text", lambda: check_splits(
        [[{"id": "a", "prompt": "hi"}], [{"id": "b", "prompt": "hi"}]], 2),
     r"prompt splits 0 and 1 share a prompt \(same text: id 'a' and id 'b'\)"),
    ("shared_id", lambda: check_splits(
        [[{"id": 3, "prompt": "hi"}], [{"id": 3, "prompt": "ho"}]], 2),
     r"prompt splits 0 and 1 share a prompt \(same id"),
    ("split_count", lambda: check_splits([[{"id": 1, "prompt": "x"}]], 3),
     r"3 iterations, 1 splits"),
    ("wrong_shape", lambda: preference_score_step(lambda g: np.full((2, 4, 3), 0.5), 4)(
        [r for g in _groups(2, 4) for r in g]),
     r"shape \[2, 4, 3\] for 2 prompts of K=4 samples .*prompt id 'p0' \(iter_000/grow/"),
    ("above_one", lambda: preference_score_step(
        lambda g: np.where(np.eye(3, dtype=bool), 0.5, 1.2)[None].repeat(len(g), 0), 3)(
        [r for g in _groups(2, 3) for r in g]),
     r"P\[0, 1\] = 1.2 for prompt id 'p0' .*must lie in \[0, 1\]"),
    ("nan", lambda: preference_score_step(lambda g: np.full((len(g), 3, 3), np.nan), 3)(
        [r for g in _groups(1, 3) for r in g]), r"P\[0, 0\] = nan"),
    ("not_numbers", lambda: preference_score_step(lambda g: "P", 3)(
        [r for g in _groups(1, 3) for r in g]), r"must return numbers \[N, K, K\]"),
    ("group_of_wrong_size", lambda: preference_score_step(lambda g: None, 3)(
        [r for g in _groups(1, 2) for r in g]), r"prompt id 'p0' has 2 samples, not K=3"),
]


@pytest.mark.parametrize("make,match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_rows_follow_compute_prob_rule():
    rng = np.random.default_rng(0)
    K, n = 5, 64
    P = _random_matrix(rng, n, K)
    score = preference_score_step(lambda g: P, K)
    records = [r for g in _groups(n, K) for r in g]
    cols = score(records)
    np.testing.assert_allclose(cols["win_rate"], P.mean(-1).reshape(-1))
    scored = [{**r, **{c: float(v[i]) for c, v in cols.items()}} for i, r in enumerate(records)]
    rows, locs, export, identical = pair_rows(scored, K)
    ref = win_rates_from_matrix(preferences_NxKxK=P.astype(np.float32))
    assert identical == 0 and len(rows) == n
    for i, (row, ex) in enumerate(zip(rows, export)):
        assert row["chosen"] == [10 + int(ref.chosen_index[i]), 2]
        assert row["rejected"] == [10 + int(ref.rejected_index[i]), 2]
        for c in ("chosen_win_rate", "rejected_win_rate", "pair_win_rate"):
            assert row[c] == pytest.approx(float(getattr(ref, c)[i]), abs=1e-6)
        assert ex["chosen_probs"] == row["pair_win_rate"]  # the official column names
        assert ex["chosen_probs_win"] == row["chosen_win_rate"]
        assert ex["chosen_probs_lose"] == row["rejected_win_rate"]
        assert ex["chosen"] == [{"role": "user", "content": f"prompt {i}"},
                                {"role": "assistant", "content": ex["chosen_text"]}]
    assert locs[0].startswith("iter_000/grow/shard-00000-of-00001.jsonl:")


def test_tied_prompts_are_dropped_and_counted():
    K = 3
    records = [r for g in _groups(2, K, same_tokens=True) for r in g]
    cols = preference_score_step(lambda g: np.full((len(g), K, K), 0.5), K)(records)
    scored = [{**r, **{c: float(v[i]) for c, v in cols.items()}} for i, r in enumerate(records)]
    rows, _, _, identical = pair_rows(scored, K)
    assert rows == [] and identical == 2


@pytest.mark.parametrize("loss,kwargs,columns", [
    ("sppo.sppo", {"eta": 1000.0}, {"chosen_win_rate", "rejected_win_rate"}),
    ("sppo.single", {"eta": 1000.0}, {"pair_win_rate"}),
    ("sppo.hard", {"eta": 1000.0}, set()),
    ("dpo.sigmoid", {"beta": 0.1}, set()),  # iterative DPO
    ("dpo.ipo", {"beta": 0.1}, set()),  # iterative IPO
])
def test_each_loss_reads_its_win_rate_columns(loss, kwargs, columns):
    s = SppoSettings(loss=loss)
    assert s.loss_kwargs == kwargs
    cfg = ModelConfig(family="llama", vocab_size=16, hidden_size=8, num_layers=1, num_heads=2,
                      num_kv_heads=2, intermediate_size=16)
    objective = preference_objective(cfg, loss=loss, loss_kwargs=kwargs, precomputed=True)
    win = {"chosen_win_rate", "rejected_win_rate", "pair_win_rate"}
    assert set(objective.columns) & win == columns


def test_preference_steps_of_the_file_runner():
    """A reward model's scores through the Bradley-Terry link, and an order-averaged pairwise
    judge, each as the score step sees them: one call for a chunk's K samples of N prompts."""
    from jaxalign.algorithms.run_sppo import judge_preference, reward_model_preference
    from jaxalign.reward import PairwiseJudge
    from tests.reward.tiny_lm import CFG, PARAMS, TOKENIZER

    K = 3
    groups = [[{**r, "completion": text} for r, text in zip(g, texts)]
              for g, texts in zip(_groups(2, K), [["a good day", "the dark river", "we saw it"],
                                                  ["a cold house", "kind and warm", "bright"]])]
    calls = []

    def scorer(prompts, completions):  # a stand-in reward model: longer is better
        calls.append(len(completions))
        return np.array([len(c) for c in completions], np.float32)

    P = reward_model_preference(scorer)(groups)
    s = np.array([[len(r["completion"]) for r in g] for g in groups], np.float32)
    np.testing.assert_allclose(P, 1 / (1 + np.exp(-(s[:, :, None] - s[:, None, :]))), atol=1e-6)
    assert calls == [2 * K]  # every candidate of the chunk in one batched call
    judge = PairwiseJudge(CFG, PARAMS, TOKENIZER, template="{prompt} then {a} or {b} which",
                          token_a="good", token_b="bad", max_length=64, min_bucket=32,
                          batch_size=16)
    records = [r for g in groups for r in g]
    cols = preference_score_step(judge_preference(judge), K)(records)
    direct = judge([g[0]["prompt"] for g in groups], [[r["completion"] for r in g] for g in groups])
    np.testing.assert_allclose(cols["win_rate"], direct.mean(-1).reshape(-1), atol=1e-6)
    np.testing.assert_allclose(cols["p_vs_1"], direct[:, :, 1].reshape(-1), atol=1e-6)
