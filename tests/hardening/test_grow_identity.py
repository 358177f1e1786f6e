"""Issue #14, class 6: the grow step's resume identity.

A grow run records what its records depend on (settings as JSON gives them back, the prompts,
the weights' fingerprint, the score function); a restart with any of them changed is refused
naming it, one with the same ones (a tuple of stop ids included) finishes to the records of an
uninterrupted run. Non-finite scores, in grow and in the driver's score phase, name the record;
duplicate prompt ids are refused naming both rows.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxalign.algorithms import driver
from jaxalign.algorithms.grow import grow, read_shards
from jaxalign.models import ModelConfig, init_params
from tests.sampling.helpers import EOS, EOT, make_tokenizer

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                  num_kv_heads=1, intermediate_size=32, max_position_embeddings=16)
PROMPTS = ["the cat sat", "a dog ran", {"prompt": "hello world", "id": "hw"}, "one two three",
           "red blue green"]
KW = dict(n=2, shard_size=2, batch_size=2, max_new_tokens=6, temperature=1.0, progress=False,
          stop_ids=(EOS, EOT))  # a tuple: grow.json holds a list


def score(prompts, completions):
    return [len(c) + 0.25 * len(p) for p, c in zip(prompts, completions)]


def other_score(prompts, completions):
    return [0.0 for _ in prompts]


class Interrupt(Exception):
    pass


def interrupt(path):
    raise Interrupt(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run's records, and a run interrupted after its first shard."""
    tok = make_tokenizer()
    params = init_params(CFG, jax.random.key(0))
    root = tmp_path_factory.mktemp("grow")
    policy = dict(policy=(CFG, params), tokenizer=tok)
    ref = read_shards(grow(PROMPTS, **policy, out_dir=str(root / "ref"), score_fn=score, **KW))
    with pytest.raises(Interrupt, match="shard-00000-of-00003"):
        grow(PROMPTS, **policy, out_dir=str(root / "cut"), score_fn=score, on_shard=interrupt,
             **KW)
    return dict(tok=tok, params=params, root=root, ref=ref, policy=policy)


def resumed(runs, name: str) -> str:
    """A fresh copy of the interrupted run's directory."""
    out = str(runs["root"] / name)
    shutil.copytree(str(runs["root"] / "cut"), out)
    return out


def test_interrupted_run_resumes_to_the_uninterrupted_records_and_refuses_other_weights(runs):
    out = resumed(runs, "e2e")
    recorded = json.load(open(os.path.join(out, "grow.json")))
    assert recorded["sampling"]["stop_ids"] == [EOS, EOT]  # saved as a list, given as a tuple
    other = init_params(CFG, jax.random.key(1))
    with pytest.raises(ValueError, match=r"other settings \(weights \(a fingerprint .*\): was "
                                         r"'[0-9a-f]{16}', now '[0-9a-f]{16}'\).*delete"):
        grow(PROMPTS, (CFG, other), tokenizer=runs["tok"], out_dir=out, score_fn=score, **KW)
    done = []
    paths = grow(PROMPTS, **runs["policy"], out_dir=out, score_fn=score, on_shard=done.append,
                 **KW)
    assert [os.path.basename(p) for p in done] == ["shard-00001-of-00003.jsonl",
                                                  "shard-00002-of-00003.jsonl"]  # not shard 0
    got = read_shards(paths)
    assert got == runs["ref"] and len(got) == 10
    assert all(np.isfinite(r["score"]) for r in got)


def _resume(runs, name, **change):
    """Resumes a copy of the interrupted run with `change`d arguments of grow."""
    kw = dict(runs["policy"], score_fn=score, **KW)
    kw.update(change)
    prompts = kw.pop("prompts", PROMPTS)
    return grow(prompts, out_dir=resumed(runs, name), **kw)


def _grow(runs, prompts, name, **change):
    """A fresh run (its own directory) with `change`d arguments."""
    kw = dict(runs["policy"], score_fn=score, **KW)
    kw.update(change)
    return grow(prompts, out_dir=str(runs["root"] / name), **kw)


def _score_phase(runs, name, cols):
    recs = [{"id": i, "sample": j, "_loc": f"iter_000/grow/shard-00000-of-00001.jsonl:{2 * i + j}"}
            for i in range(2) for j in range(2)]
    d = str(runs["root"] / name)
    os.makedirs(d)
    return driver.score_phase(d, recs, lambda rs: cols, chunk_prompts=2)


# (id, the call, the error it must raise)
CASES = [
    ("resume-other-weights", lambda r, k: _resume(r, k, policy=(CFG, init_params(
        CFG, jax.random.key(2)))), r"weights \(a fingerprint"),
    ("resume-other-score_fn", lambda r, k: _resume(r, k, score_fn=other_score),
     r"score_fn \(score_id, .*\): was '[\w.]*\.score', now '[\w.]*\.other_score'"),
    ("resume-other-score_id", lambda r, k: _resume(r, k, score_id="reward-v2"),
     r"score_fn .*now 'reward-v2'"),
    ("resume-other-prompts-same-count", lambda r, k: _resume(r, k, prompts=PROMPTS[::-1]),
     r"prompts \(a digest of their ids and texts\): was"),
    ("resume-other-stop-ids", lambda r, k: _resume(r, k, stop_ids=(EOS,)),
     r"sampling\.stop_ids: was \[2, 3\], now \[2\]"),
    ("resume-other-max_len", lambda r, k: _resume(r, k, sampler_kw=dict(max_len=8)),
     r"sampler\.max_len: was 16, now 8"),
    ("resume-numpy-temperature", lambda r, k: _resume(r, k, temperature=np.float64(1.0)),
     None),  # the same setting after JSON: accepted, finishes
    ("score-nan", lambda r, k: _grow(r, PROMPTS, k, score_fn=lambda p, c: [
        float("nan") if "dog" in x else 1.0 for x in p]),
     r"score_fn gave nan for the record of prompt id 1 \(prompt 1\), sample 0"),
    ("score-inf", lambda r, k: _grow(r, PROMPTS, k, score_fn=lambda p, c: [
        1.0, float("inf")] * (len(p) // 2)),
     r"score_fn gave inf for the record of prompt id 0 \(prompt 0\), sample 1"),
    ("score-none", lambda r, k: _grow(r, PROMPTS, k, score_fn=lambda p, c: [None] * len(p)),
     r"score_fn gave None for the record of prompt id 0 \(prompt 0\), sample 0"),
    ("score-count", lambda r, k: _grow(r, PROMPTS, k, score_fn=lambda p, c: [1.0]),
     r"score_fn returned 1 scores .* for 4 \(prompt, completion\) pairs"),
    ("duplicate-ids", lambda r, k: _grow(r, ["the cat", {"prompt": "a dog", "id": 5},
                                            {"prompt": "one", "id": 5}], k),
     r"prompt ids must be unique: prompt 2 has id 5, as prompt 1 has \(5\)"),
    ("duplicate-ids-int-and-str", lambda r, k: _grow(r, [{"prompt": "a", "id": 7},
                                                        {"prompt": "b", "id": "7"}], k),
     r"prompt ids must be unique: prompt 1 has id '7', as prompt 0 has \(7\)"),
    ("id-not-str-or-int", lambda r, k: _grow(r, [{"prompt": "a", "id": 1.5}], k),
     r"prompt 0: 'id' must be a string or an int, got 1\.5"),
    ("driver-score-nan", lambda r, k: _score_phase(r, k, {"reward": [1.0, 2.0, np.nan, 0.0]}),
     r"reward=nan for the record of prompt id 1, sample 0 \(iter_000/grow/shard-00000-of-00001"
     r"\.jsonl:2\)"),
    ("driver-score-none", lambda r, k: _score_phase(r, k, {"reward": [1.0, None, 1.0, 0.0]}),
     r"reward=None for the record of prompt id 0, sample 1"),
    ("driver-score-not-a-dict", lambda r, k: _score_phase(r, k, np.ones(4)),
     r"must return \{column: values\}, got a ndarray for the records from iter_000/grow"),
]


@pytest.mark.parametrize("call,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_grow_resume_identity_and_records(runs, request, call, match):
    name = request.node.callspec.id
    if match is None:
        records = read_shards(call(runs, name))
        assert records == runs["ref"]
        return
    with pytest.raises(ValueError, match=match):
        call(runs, name)
    for f in os.listdir(runs["root"] / name) if os.path.isdir(runs["root"] / name) else []:
        assert "NaN" not in open(runs["root"] / name / f).read()  # nothing non-strict written
