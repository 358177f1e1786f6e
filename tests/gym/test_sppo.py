"""SPPO self-play on the gym, in process: the preference step's matrices become the rows' win
rates, each iteration's reference is its starting policy, the win rate against pi_0 rises on the
Bradley-Terry oracle, and the exported datasets and loss logs load in pandas."""

import os

import jax
import numpy as np
import pandas as pd
import pytest

from jaxalign import io
from jaxalign.algorithms import driver as drv_lib
from jaxalign.algorithms.sppo import SppoSettings, run_sppo
from jaxalign.checksum import tree_fingerprint
from jaxalign.gym import oracles, tasks
from jaxalign.gym import sppo as sppo_gym
from jaxalign.sharding import make_mesh

K = 4
SETTINGS = SppoSettings(iterations=3, samples=K, temperature=1.0, top_p=1.0, max_new_tokens=16,
                        loss="sppo.sppo", eta=10.0, epochs=4.0, sample_batch=32, score_chunk=16)


@pytest.fixture(scope="module")
def sppo_run(ref, tmp_path_factory):
    oracle = oracles.BTOracle(tasks.TASKS["sentiment"].reward, 0.5)
    splits, test = sppo_gym.prompt_splits(ref.language, 3, 32, 64, seed=3)
    workdir = str(tmp_path_factory.mktemp("sppo"))
    out = run_sppo(SETTINGS, policy=(ref.model_cfg, ref.params), tokenizer=ref.tokenizer,
                   splits=splits, preference=sppo_gym.oracle_preference(oracle),
                   workdir=workdir, config={"test": "sppo"}, batch_size=16, max_len=64,
                   optim=dict(optimizer="adamw", lr=1e-3, decay="linear", grad_clip=10.0),
                   mesh=make_mesh(devices=jax.devices()[:1]))
    return dict(out=out, oracle=oracle, workdir=workdir, test=test, splits=splits)


def _phase(workdir, t, phase):
    d = os.path.join(workdir, f"iter_{t:03d}", phase)
    return d, io.read_json(os.path.join(d, "summary.json"))


def test_rows_carry_the_matrix_row_means_of_their_prompt(sppo_run):
    workdir, oracle = sppo_run["workdir"], sppo_run["oracle"]
    for t in range(3):
        scored = drv_lib.read_scored(*_phase(workdir, t, "score"))
        groups = drv_lib.prompt_groups(scored)
        assert len(groups) == 32 and all(len(g) == K for g in groups)
        P = np.array([[[r[f"p_vs_{j}"] for j in range(K)] for r in g] for g in groups])
        assert np.all(P[:, np.arange(K), np.arange(K)] == 0.5)  # P_ii = 1/2
        np.testing.assert_allclose(P + P.transpose(0, 2, 1), 1.0, atol=1e-12)
        g = groups[0]  # the oracle's own probabilities, recomputed
        ys = [oracles.strip(r["tokens"], len(r["tokens"])) for r in g]
        want = oracle.prob([g[0]["prompt_tokens"]] * (K - 1), [ys[0]] * (K - 1), ys[1:])
        np.testing.assert_allclose(P[0, 0, 1:], want, atol=1e-12)
        win = np.array([[r["win_rate"] for r in g] for g in groups])
        np.testing.assert_allclose(win, P.mean(-1), atol=1e-12)  # win rate = row mean
        data = pd.read_parquet(os.path.join(workdir, f"iter_{t:03d}", "build", "dataset.parquet"))
        assert {"prompt", "chosen", "rejected", "chosen_probs", "chosen_probs_win",
                "chosen_probs_lose"} <= set(data.columns)
        kept = {str(gr[0]["id"]): (gr, w) for gr, w in zip(groups, win)}
        for _, row in data.iterrows():
            gr, w = kept[row["id"]]
            texts = [r["completion"] for r in gr]
            assert row["chosen_text"] == texts[int(np.argmax(w))]  # y_w = argmax
            assert row["rejected_text"] == texts[int(np.argmin(w))]  # y_l = argmin
            assert row["chosen_probs_win"] == pytest.approx(w.max(), abs=1e-6)
            assert row["chosen_probs_lose"] == pytest.approx(w.min(), abs=1e-6)
            assert list(row["chosen"])[-1]["content"] == row["chosen_text"]
        _, built = _phase(workdir, t, "build")  # every prompt a row, or a tie dropped
        assert len(data) == built["rows"] and built["rows"] + built["identical"] == 32
        jsonl = pd.read_json(os.path.join(workdir, f"iter_{t:03d}", "build", "dataset.jsonl"),
                             lines=True)
        assert len(jsonl) == len(data)
        log = pd.read_parquet(os.path.join(workdir, f"iter_{t:03d}", "train", "loss_log.parquet"))
        assert "train/loss" in log.columns and log["step"].max() == 8


def test_reference_of_each_iteration_is_its_starting_policy(ref, sppo_run):
    its = sppo_run["out"]["iterations"]
    assert its[0]["reference"] == tree_fingerprint(ref.params)
    for prev, cur in zip(its, its[1:]):
        assert cur["reference"] == prev["policy"] != prev["reference"]
    assert tree_fingerprint(sppo_run["out"]["policy"]) == its[-1]["policy"]


def test_win_rate_against_the_start_rises_on_the_bt_oracle(ref, sppo_run):
    ev = sppo_gym.Evaluator(ref, sppo_run["test"], samples=8, max_new=16, seed=11)
    wins = [ev(ref.params, sppo_run["oracle"])["win_rate"]]
    for it in sppo_run["out"]["iterations"]:
        wins.append(ev(drv_lib.load_policy(it["dir"], ref.params), sppo_run["oracle"])["win_rate"])
    print("win rate vs pi_0 by iterate:", np.round(wins, 3))
    assert abs(wins[0] - 0.5) < 0.06
    assert all(b > a for a, b in zip(wins, wins[1:])), wins
