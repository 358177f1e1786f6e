"""SPPO from files through the entry point: the smoke config trains two iterations and resumes
as a no-op; the paper configs dry-run on their slices; bad prompt splits and preference
settings are refused before any weights load."""

import json
import os

import pandas as pd
import pytest

from experiments import sppo_ultrafeedback
from jaxalign import io
from jaxalign.main import run_config


def test_smoke_trains_two_iterations_and_resumes(tmp_path):
    c = sppo_ultrafeedback.get_config("smoke")
    c.workdir = str(tmp_path)
    out = run_config(c)
    its = out["iterations"]
    assert [it["iteration"] for it in its] == [0, 1]
    assert its[1]["reference"] == its[0]["policy"]  # pi_1 is iteration 1's frozen reference
    assert json.load(open(tmp_path / "sppo_iterations.json")) == json.loads(json.dumps(its))
    for t in range(2):
        data = pd.read_parquet(tmp_path / f"iter_{t:03d}" / "build" / "dataset.parquet")
        assert len(data) == its[t]["rows"] > 0
        assert {"prompt", "chosen", "rejected", "chosen_probs", "chosen_probs_win",
                "chosen_probs_lose"} <= set(data.columns)
        assert (data["chosen_probs_win"] >= data["chosen_probs_lose"]).all()
        log = pd.read_json(tmp_path / f"iter_{t:03d}" / "train" / "loss_log.jsonl", lines=True)
        assert log["train/loss"].notna().any()
    again = run_config(c)  # every phase committed: nothing runs again, same answer
    assert again["iterations"] == its


def _files(tmp_path, texts):
    paths = []
    for t, rows in enumerate(texts):
        p = str(tmp_path / f"split{t}.jsonl")
        io.write_atomic(p, "".join(json.dumps({"prompt": x}) + "\n" for x in rows))
        paths.append(p)
    return tuple(paths)


@pytest.mark.parametrize("edit,match", [
    (lambda c, tmp: c.data.update(toy=False, splits=_files(tmp, [["a b", "c d"], ["c d"]])),
     r"prompt splits 0 and 1 share a prompt \(same text: id '0:1' and id '1:0'\)"),
    (lambda c, tmp: c.data.update(toy=False, splits=_files(tmp, [["a b"]])),
     r"config.data.splits: one prompt file per iteration \(sppo.iterations=2\)"),
    (lambda c, tmp: c.preference.update(kind="pairrm"), r"config.preference.kind"),
    (lambda c, tmp: c.sppo.update(samples=1), r"sppo.samples must be an integer >= 2"),
], ids=["shared_prompt", "split_count", "preference_kind", "k_below_2"])
def test_bad_settings_are_refused_before_loading(tmp_path, edit, match):
    c = sppo_ultrafeedback.get_config("smoke")
    c.workdir = str(tmp_path / "run")
    edit(c, tmp_path)
    with pytest.raises(ValueError, match=match):
        run_config(c)
    assert not os.path.exists(tmp_path / "run" / "iter_000")


@pytest.mark.parametrize("arg,params", [("llama3_8b", 8.03e9), ("gemma2_9b", 9.24e9)])
def test_paper_configs_dry_run(arg, params):
    c = sppo_ultrafeedback.get_config(arg)
    report = run_config(c, dry_run=True)
    assert report["param_count"] == pytest.approx(params, rel=0.01)
    assert set(report["estimates"]) == set(c.dry_run_meshes)
    assert {"loss", "grad_norm", "chosen_reward"} <= set(report["metrics"])
