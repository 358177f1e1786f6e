"""The iteration driver under ReST: exact resume after SIGKILLs in every phase, a changed config
refused by key, and bad input (thresholds, scores, records, prompts) as errors that name it."""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

from jaxalign import io
from jaxalign.algorithms import driver as drv_lib
from jaxalign.algorithms.rest import RestSettings, improve_datasets, rest_settings
from jaxalign.data import DataError
from tests.algorithms import rest_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(workdir, kill=None, timeout=600):
    """The tiny run in a subprocess (one CPU device; the suite's compilation cache, see
    tests/conftest.py, so only the first run compiles)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("KILL", None)
    if kill:
        env["KILL"] = kill
    out = subprocess.run([sys.executable, "-m", "tests.algorithms.rest_tiny", str(workdir)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One whole run, never interrupted."""
    root = tmp_path_factory.mktemp("rest_tiny")
    rc, out = _run(root / "ref")
    assert rc == 0, out
    return root


def _records(workdir):
    """Every committed data file of the run (grow shards, scored records, dataset rows)."""
    out = {}
    for d, _, files in os.walk(workdir):
        for f in files:
            p = os.path.join(d, f)
            if f.endswith(".jsonl") and io.is_committed(p):
                out[os.path.relpath(p, workdir)] = io.read_committed(p)
    return out


def _params(workdir):
    return dict(np.load(os.path.join(workdir, "final.npz")))


def test_sigkill_in_every_phase_then_resume_is_bit_identical(uninterrupted):
    """The run kills itself at a seeded point in each phase (BC training, between iterations,
    mid-grow, mid-scoring, mid-build, mid-improve training), is restarted with the same command
    each time, and ends with the records and parameters of the uninterrupted run."""
    seen = json.load(open(uninterrupted / "ref" / "events.json"))
    rng = random.Random(0)
    # each restart counts events from its own start; the k-th event of a phase is inside it
    plan = ["train:step:" + str(rng.randint(1, 3)), "iteration:1",
            "grow:shard:" + str(rng.randint(1, seen["grow:shard"] - 1)),
            "score:chunk:" + str(rng.randint(1, 3)), "build:1",
            "train:step:" + str(rng.randint(1, 3))]
    work = uninterrupted / "killed"
    for kill in plan:
        rc, out = _run(work, kill=kill)
        assert rc == -signal.SIGKILL, (kill, out)
        assert not os.path.exists(work / "final.npz")
    rc, out = _run(work)
    assert rc == 0, out
    want, got = _params(uninterrupted / "ref"), _params(work)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert _records(work) == _records(uninterrupted / "ref")
    for d in ("iter_001/train_improve_0", "iter_001/train_improve_1"):  # each step logged once
        steps = [r["step"] for r in map(json.loads, open(work / d / "metrics.jsonl"))
                 if "train/loss" in r]
        assert steps == sorted(set(steps)), (d, steps)


def test_restart_with_another_config_is_refused_naming_the_keys(uninterrupted):
    """What `run_rest` does first: compare the workdir's run.json with this run's config."""
    settings = {**rest_tiny.SETTINGS, "samples": 3, "temperature": 0.7}
    config = {"settings": settings, "optim": rest_tiny.OPTIM}
    with pytest.raises(ValueError, match=r"keys that differ: settings\.samples, "
                                         r"settings\.temperature\. .*start_over"):
        drv_lib.Driver(str(uninterrupted / "ref"), config)
    drv_lib.Driver(str(uninterrupted / "ref"), {"settings": rest_tiny.SETTINGS,
                                                 "optim": rest_tiny.OPTIM})  # same: accepted


def test_grow_records_of_another_tokenizer_or_vocabulary_are_refused(uninterrupted, tmp_path):
    from jaxalign.algorithms.grow import grow
    from jaxalign.gym import language
    from jaxalign.models import init_params
    from jaxalign.sampling import Sampler
    import jax
    grow_dir = str(uninterrupted / "ref" / "iter_001" / "grow")
    settings = io.read_json(os.path.join(grow_dir, "grow.json"))
    other = Sampler(rest_tiny.CFG, init_params(rest_tiny.CFG, jax.random.key(0)),
                    language.tokenizer(), max_len=32)
    with pytest.raises(ValueError, match="other settings.*tokenizer"):
        grow(["the cat"] * settings["num_prompts"], other, out_dir=grow_dir, n=settings["n"],
             seed=settings["seed"], shard_size=settings["shard_size"], progress=False,
             **settings["sampling"])
    # a record whose ids the model's vocabulary does not have: named by file and line
    records = drv_lib.read_records(grow_dir, {"shards": sorted(
        f for f in os.listdir(grow_dir) if f.startswith("shard") and f.endswith(".jsonl"))})
    records[5]["tokens"] = records[5]["tokens"] + [rest_tiny.CFG.vocab_size + 3]
    for r in records:
        r["reward"] = 1.0
    s = RestSettings(normalize="sigmoid", improve_steps=0)
    [(_, _, rows, locs)], _ = improve_datasets(s, records, 1)
    from jaxalign.data import from_token_rows
    with pytest.raises(DataError, match=r"^iter_001/grow/shard-00000-of-00004\.jsonl:6: .*token "
                                        r"id 67.*outside the vocabulary \[0, 64\).*another "
                                        r"tokenizer"):
        from_token_rows("sft", rows, pad_id=0, max_length=64, vocab_size=rest_tiny.CFG.vocab_size,
                        columns={"reward": "float32", "threshold": "float32"}, locations=locs)


def _scored(rewards_per_prompt):
    return [{"id": i, "prompt_tokens": [1, 5], "tokens": [6, 2], "reward": r,
             "_loc": f"scored.jsonl:{i * 10 + j}"}
            for i, rs in enumerate(rewards_per_prompt) for j, r in enumerate(rs)]


def test_thresholds_above_the_mean_and_a_threshold_no_row_passes_is_skipped():
    # sigmoid: [.269 .731 .832], [.310 .769 .881], mean .632; 0.6 is below it
    scored = _scored([[-1.0, 1.0, 1.6], [-0.8, 1.2, 2.0]])
    s = RestSettings(normalize="sigmoid", improve_steps=4, thresholds=(0.6, 0.7, 0.8, 0.9, 0.99))
    plan, skipped = improve_datasets(s, scored, 1)
    assert [(name, label, len(rows)) for name, label, rows, _ in plan] == [
        ("improve_0", "all of D_g", 6), ("improve_1", "tau=0.7", 4), ("improve_2", "tau=0.8", 2)]
    # 0.6 is not above the mean (not used), 0.9 and 0.99 keep nothing: two of four skipped
    assert skipped == 2
    assert all(r["threshold"] == pytest.approx(0.8) and r["reward"] > 0.8 for r in plan[2][2])
    # per-source percentiles: each prompt's own median
    s = RestSettings(normalize="sigmoid", improve_steps=1, threshold_mode="source_percentile",
                     percentiles=(50.0,))
    plan, _ = improve_datasets(s, scored, 1)
    assert len(plan[1][2]) == 2 and plan[1][3] == ["scored.jsonl:2", "scored.jsonl:12"]


@pytest.mark.parametrize("bad, match", [
    (dict(thresholds=(0.7, 0.9, 0.8)), r"rest\.thresholds must increase strictly.*entry 2 is 0\.8"),
    (dict(percentiles=(50.0, 50.0)), r"rest\.percentiles must increase strictly"),
    (dict(thresholds=(0.7, 1.5)), r"normalised \[0, 1\] reward scale"),
    (dict(normalize="zscore"), r"rest\.normalize: expected one of \['percentile', 'sigmoid'\]"),
])
def test_bad_settings_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        RestSettings(**bad)
    with pytest.raises(ValueError, match=r"config\.rest: unknown keys \['treshold'\]"):
        rest_settings({"treshold": 0.5})


@pytest.mark.parametrize("cols, match", [
    ({"reward": [1.0, float("nan"), 0.0]}, r"reward=nan for the record of prompt id 0, sample 1 "
                                           r"\(g\.jsonl:2\)"),
    ({"other": [1.0, 1.0, 1.0]}, r"returned no 'reward' column"),
    ({"reward": [1.0, 2.0]}, r"column 'reward' has shape \(2,\) for 3 records"),
])
def test_a_bad_score_names_the_record(tmp_path, cols, match):
    records = [{"id": 0, "sample": j, "_loc": f"g.jsonl:{j + 1}"} for j in range(3)]
    score = lambda recs: {k: np.array(v) for k, v in cols.items()}  # noqa: E731
    with pytest.raises(ValueError, match=match):
        drv_lib.score_phase(str(tmp_path), records, score, chunk_prompts=1,
                            required=("reward",))
    assert not any(f.endswith(".commit") for f in os.listdir(tmp_path))  # nothing committed


def test_an_empty_prompt_set_or_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="non-empty dataset D"):
        rest_tiny.run(str(tmp_path), data=[])
    with pytest.raises(ValueError, match="held-out prompts"):
        rest_tiny.run(str(tmp_path), heldout=[])
