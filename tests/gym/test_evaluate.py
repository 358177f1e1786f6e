import numpy as np
import pytest

from jaxalign.gym.evaluate import EvalConfig, Suite, markdown_table


@pytest.fixture(scope="module")
def suite(ref):
    return Suite(ref, EvalConfig(num_text=16, num_arith=8, samples=2))


def test_reference_against_itself(suite, ref):
    row = suite.evaluate(ref.params)
    assert abs(row["kl"]) < 1e-3  # same samples, same policy: log-ratio 0 up to float error
    assert row["win_rate"] == 0.5
    for key in ("reward/sentiment", "reward/helpfulness", "reward/harmlessness",
                "reward/arithmetic", "violation/any", "violation/no_repeat", "distinct_1",
                "distinct_2", "length"):
        assert np.isfinite(row[key]), key
    assert 0 <= row["violation/any"] <= 1 and 0 < row["distinct_2"] <= 1


def test_kl_is_positive_for_another_policy(suite, ref):
    import jax
    noisy = jax.tree.map(lambda x: x * 1.3, ref.params)
    row = suite.evaluate(noisy)
    assert row["kl"] > 0.05


def test_markdown_table():
    t = markdown_table([{"a": 1.23456, "b": "x"}], ["a", "b"])
    assert t == "| a | b |\n|---|---|\n| 1.235 | x |\n"
