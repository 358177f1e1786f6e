import itertools

import numpy as np

from jaxalign.data import load_dataset
from jaxalign.gym import language as L
from jaxalign.gym import oracles, tasks


def ids(s):
    return [L.ID[w] for w in s.split()]


P = [L.BOS] + ids("#news cat day :")


def test_bt_probability_by_hand():
    o = oracles.BTOracle(tasks.sentiment, temperature=0.5)
    p = o.prob([P, P], [ids("good </s>"), ids("cat </s>")], [ids("cat </s>"), ids("cat </s>")])
    np.testing.assert_allclose(p, [1 / (1 + np.exp(-np.tanh(0.5) / 0.5)), 0.5], rtol=1e-6)
    hard = oracles.BTOracle(tasks.sentiment, temperature=1e-6)
    assert hard.prob([P], [ids("good")], [ids("bad")])[0] == 1.0


def test_bt_label_noise_rate():
    o = oracles.BTOracle(tasks.sentiment, temperature=0.5)
    n = 20000
    labels = o.label([P] * n, [ids("good")] * n, [ids("cat")] * n, np.random.default_rng(0))
    expect = 1 / (1 + np.exp(-np.tanh(0.5) / 0.5))
    assert abs(labels.mean() - expect) < 0.01


def test_cyclic_oracle_is_intransitive():
    o = oracles.CyclicOracle(margin=0.3)
    # one completion of each style: WORDS[i] has style i % 3
    y = [[L.ID[L.WORDS[s]], L.EOS] for s in range(3)]
    assert [oracles.style(c) for c in y] == [0, 1, 2]
    p01, p12, p20 = (o.prob([P], [y[a]], [y[b]])[0] for a, b in ((0, 1), (1, 2), (2, 0)))
    assert min(p01, p12, p20) > 0.5  # 0 > 1 > 2 > 0: a cycle, no scalar reward fits it
    for a, b in itertools.permutations(range(3), 2):
        assert abs(o.prob([P], [y[a]], [y[b]])[0] + o.prob([P], [y[b]], [y[a]])[0] - 1) < 1e-12


def test_preference_jsonl_is_a_real_dataset(ref, tmp_path):
    oracle = oracles.BTOracle(tasks.sentiment, temperature=0.5)
    ds = oracles.pair_dataset(ref, oracle, str(tmp_path / "pairs.jsonl"), 32, seed=0)
    assert len(ds) > 10
    line = (tmp_path / "pairs.jsonl").read_text().splitlines()[0]
    assert '"chosen": " ' in line and '"rejected": " ' in line
    rec = ds[0]
    assert rec["chosen"][-1] == L.EOS and rec["prompt"][0] == L.BOS
    ds2, _ = load_dataset("preference", str(tmp_path / "pairs.jsonl"), ref.tokenizer)
    assert len(ds2) == len(ds)
