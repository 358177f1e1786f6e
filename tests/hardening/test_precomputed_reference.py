"""Precomputed reference log-probs (`reference="precomputed"`): every evaluated split gets its
table, a table is tied to its dataset and reference weights, and no row is ever made up."""

import os
import shutil

import jax
import numpy as np
import pytest

from experiments import dpo_toy
from jaxalign.algorithms import run_dpo
from jaxalign.models import init_params
from jaxalign.objectives import precompute_reference_logps, with_reference_logps
from jaxalign.train.metrics import read_jsonl
from tests.train.batches import TINY, preference_batch


def _config(workdir, reference, **data):
    c = dpo_toy.get_config("smoke")
    c.workdir = str(workdir)
    c.reference = reference
    c.data.update(dict(toy_train=24, toy_eval=8, batch_size=8, **data))
    c.optim.update(dict(total_steps=4, warmup_steps=1))
    c.loop.update(dict(total_steps=4, eval_every=2, checkpoint_every=4, log_every=1,
                       keep_checkpoints=1, async_checkpoints=False, progress_bar=False))
    return c


def _evals(workdir):
    return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "eval/loss" in r]


@pytest.fixture(scope="module")
def on_the_fly(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("on_the_fly")
    _, state = run_dpo.run(_config(workdir, "on_the_fly"))
    return workdir, jax.device_get(state.params)


def _assert_same_run(workdir, params, want_dir, want_params):
    got, want = _evals(workdir), _evals(want_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 2, 4]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g["eval/loss"], w["eval/loss"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(g["eval/reward_margin"], w["eval/reward_margin"], rtol=1e-4,
                                   atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(params), want_params)


def test_precomputed_runs_equal_on_the_fly(tmp_path, on_the_fly):
    """The stock toy config and one's own data files in a fresh workdir: both train, evaluate
    (the eval split has its table) and equal the run with the reference on the fly."""
    want_dir, want_params = on_the_fly
    _, state = run_dpo.run(_config(tmp_path / "toy", "precomputed"))
    _assert_same_run(tmp_path / "toy", state.params, want_dir, want_params)
    for split in ("train", "eval"):
        assert os.path.exists(tmp_path / "toy" / f"ref_logps_{split}.npz.commit")

    own = tmp_path / "own_data"  # the same rows as user files; the workdir does not exist yet
    own.mkdir()
    for split in ("train", "eval"):
        shutil.copy(want_dir / "data" / f"{split}.jsonl", own / f"{split}.jsonl")
    fresh = tmp_path / "fresh" / "workdir"
    _, state = run_dpo.run(_config(fresh, "precomputed", toy=False,
                                   train=str(own / "train.jsonl"), eval=str(own / "eval.jsonl")))
    _assert_same_run(fresh, state.params, want_dir, want_params)


PARAMS = init_params(TINY, jax.random.key(0))
OTHER = init_params(TINY, jax.random.key(1))
BATCHES = [preference_batch(s) for s in range(2)]


def _table(path, params=PARAMS, batches=BATCHES, dataset="rows-v1"):
    return precompute_reference_logps(TINY, params, batches, str(path), dataset=dataset)


def _tear(path):
    os.remove(str(path) + ".commit")


CASES = {  # case: (what is done after a first table was written, why it is recomputed)
    "same_dataset_and_weights": (lambda p: _table(p), None),
    "other_reference_weights": (lambda p: _table(p, params=OTHER), "another reference"),
    "other_dataset": (lambda p: _table(p, dataset="rows-v2"), "another dataset"),
    "torn_table_file": (lambda p: (_tear(p), _table(p))[1], "incomplete"),
    "garbage_table_file": (lambda p: (_tear(p), open(p, "wb").write(b"not npz"),
                                      open(str(p) + ".commit", "w").write("{}"), _table(p))[3],
                           "incomplete"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_table_is_reused_only_for_its_dataset_and_weights(tmp_path, case, capsys):
    path = tmp_path / "ref.npz"
    first = _table(path)
    capsys.readouterr()
    make, why = CASES[case]
    again = make(path)
    said = capsys.readouterr().out
    assert len(again) == len(first) == 2 * 8
    if why is None:
        assert said == "" and again.rows == first.rows and again.identity == first.identity
        return
    assert f"{path}: computing reference log-probs" in said and why in said, said
    assert (again.rows == first.rows) == (case != "other_reference_weights")
    assert make(path).rows == again.rows and "computing" not in capsys.readouterr().out \
        or case.endswith("_file")  # the new table replaced the old one and is reused


def test_a_missing_row_is_an_error_never_zero(tmp_path):
    table = _table(tmp_path / "ref.npz", batches=BATCHES[:1])
    with_reference_logps(BATCHES[0], table)  # every row present
    with pytest.raises(KeyError, match=r"row 8 has no precomputed reference log-probs in .*ref"):
        with_reference_logps(BATCHES[1], table)  # rows 8..15 were never computed
    padded = dict(BATCHES[0], index=np.r_[BATCHES[0]["index"][:-1], -1])
    padded["chosen_mask"] = BATCHES[0]["chosen_mask"].copy()
    padded["chosen_mask"][-1] = False  # a padding row: no value needed, weight 0
    out = with_reference_logps(padded, table)
    assert out["ref_chosen_logps"][-1] == 0 and out["ref_chosen_logps"][0] != 0
