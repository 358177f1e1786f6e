"""Workdirs on buckets (issue #20): jaxalign.io on URLs, through a test double of the path API
with object-store semantics (no rename; an object appears whole when its upload closes).

The double is registered for the `mem://` scheme in `io.SCHEMES`, the table io consults before
falling back to `etils.epath.Path` for a URL: the code under test takes the same path as on
gs://, and the double needs no patching of etils' globals. A kill is modelled by the double
raising `Killed` at its k-th mutation (a delete, or an object's upload: before it lands, or with
half its bytes landed, as a filesystem without atomic writes could leave it).
"""

import json
import logging
import os
from io import BytesIO, StringIO

import jax
import numpy as np
import pytest

from jaxalign import io


class Killed(Exception):
    """The process dies here (the test's SIGKILL)."""


class Store:
    """Objects by full URL; "directories" are key prefixes, as in GCS. Every mutation is logged
    in `ops` as (op, url); with `kill_at=k` the k-th one raises Killed (`torn`: an upload
    leaves its first half behind)."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.ops: list[tuple[str, str]] = []
        self.kill_at, self.torn = None, False

    def mutate(self, op: str, url: str, data: bytes = b"") -> None:
        k = len(self.ops)
        self.ops.append((op, url))
        if k == self.kill_at:
            if self.torn and op == "put":
                self.objects[url] = data[:len(data) // 2]
            raise Killed(f"killed at {op} {url}")
        if op == "put":
            self.objects[url] = data
        else:
            del self.objects[url]


class _Upload:
    """A writable file whose object appears whole when it is closed."""

    def __init__(self, path: "MemPath", text: bool):
        self.path, self.buf = path, StringIO() if text else BytesIO()

    def write(self, data):
        return self.buf.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        data = self.buf.getvalue()
        self.path.store.mutate("put", self.path.url, data.encode() if isinstance(data, str)
                               else data)


class MemPath:
    """The part of `etils.epath.Path` that jaxalign.io uses, on a `Store`; no rename."""

    def __init__(self, url: str, store: Store):
        self.url, self.store = url.rstrip("/"), store

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[1]

    def _children(self) -> set[str]:
        prefix = self.url + "/"
        return {k[len(prefix):].split("/", 1)[0] for k in self.store.objects
                if k.startswith(prefix)}

    def open(self, mode: str = "r"):
        if mode in ("w", "wb"):
            return _Upload(self, text=mode == "w")
        if mode != "rb":
            raise AssertionError(f"io opened {self.url} with mode {mode!r}")
        if self.url not in self.store.objects:
            raise FileNotFoundError(self.url)
        return BytesIO(self.store.objects[self.url])

    def exists(self) -> bool:
        return self.url in self.store.objects or self.is_dir()

    def is_dir(self) -> bool:
        return bool(self._children())

    def iterdir(self):
        names = self._children()
        if not names:
            raise FileNotFoundError(self.url)
        return (MemPath(f"{self.url}/{n}", self.store) for n in sorted(names))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        pass  # an object store has no directories

    def unlink(self) -> None:
        if self.url not in self.store.objects:
            raise FileNotFoundError(self.url)
        self.store.mutate("delete", self.url)

    def rmtree(self) -> None:
        for k in sorted(self.store.objects):
            if k.startswith(self.url + "/"):
                self.store.mutate("delete", k)

    def rename(self, target):
        raise AssertionError(f"rename of {self.url}: an object store has none")

    replace = rename


@pytest.fixture
def store(monkeypatch):
    s = Store()
    monkeypatch.setitem(io.SCHEMES, "mem", lambda url: MemPath(url, s))
    return s


OLD, NEW = b'{"x": "old"}\n', b'{"x": "new!"}\n'
P = "mem://bucket/run/iter_000/grow/shard-00000-of-00001.jsonl"
M = P + io.MARKER


def test_commit_round_trip_and_helpers(store):
    io.write_jsonl(P, [{"x": 1}, {"x": 2}])
    assert io.is_committed(P) and io.read_jsonl(P) == [{"x": 1}, {"x": 2}]
    marker = json.loads(store.objects[M])
    assert marker["bytes"] == len(store.objects[P]) == 18
    io.write_json("mem://bucket/run/run.json", {"a": [1]})
    assert io.read_json("mem://bucket/run/run.json") == {"a": [1]}
    assert io.read_json_object("mem://bucket/run/run.json") == {"a": [1]}
    assert io.listdir("mem://bucket/run") == ["iter_000", "run.json", "run.json.commit"]
    assert io.isdir("mem://bucket/run/iter_000") and not io.isdir("mem://bucket/run/run.json")
    assert io.exists(P) and not io.exists("mem://bucket/run/nothing")
    io.rmtree("mem://bucket/run/iter_000")
    io.remove("mem://bucket/run/run.json.commit")
    assert not io.is_committed(P) and not io.is_committed("mem://bucket/run/run.json")
    assert sorted(store.objects) == ["mem://bucket/run/run.json"]
    with pytest.raises(FileNotFoundError, match=r"shard-00000-of-00001\.jsonl: not committed"):
        io.read_committed(P)
    assert not any(op == "rename" for op, _ in store.ops)


@pytest.mark.parametrize("old", [None, OLD], ids=["fresh", "over_old"])
@pytest.mark.parametrize("torn", [False, True], ids=["lost", "torn"])
def test_a_write_killed_anywhere_is_never_counted_done(store, old, torn):
    """Kill write_committed at each of its mutations: nothing `is_committed` vouches for but
    the untouched old file, never the new bytes; then the rewrite succeeds."""
    clean = [("delete", M)] * (old is not None) + [("put", P), ("put", M)]
    for k in range(len(clean) + 1):  # k == len(clean): the run is not killed
        store.objects, store.ops, store.kill_at, store.torn = {}, [], None, torn
        if old is not None:
            io.write_committed(P, old)
            store.ops = []
        store.kill_at = k
        if k < len(clean):
            with pytest.raises(Killed):
                io.write_committed(P, NEW)
        else:
            io.write_committed(P, NEW)
        assert store.ops == clean[:k + 1]  # the protocol: old marker out, data, then marker
        if k == len(clean):
            assert io.read_committed(P) == NEW
        elif io.is_committed(P):  # only a kill before anything changed leaves the old file
            assert (k, io.read_committed(P)) == (0, old)
        store.kill_at = None
        io.write_committed(P, NEW)  # the restart writes it again
        assert io.read_committed(P) == NEW


@pytest.mark.parametrize("bytes_", [NEW, OLD[:-2] + b"X\n"], ids=["other_size", "same_size"])
def test_an_old_marker_never_vouches_for_other_bytes(store, bytes_):
    io.write_committed(P, OLD)
    store.objects[P] = bytes_  # new data put behind the marker's back
    assert not io.is_committed(P)


def test_write_atomic_is_one_object_write_and_never_a_rename(store):
    path = "mem://bucket/run/config.json"
    store.objects[path] = b"old"
    assert io.write_atomic(path, "new\n") == path
    assert store.ops == [("put", path)] and store.objects == {path: b"new\n"}
    with pytest.raises(RuntimeError, match="midway"), io.atomic_writer(path, "wb") as fh:
        fh.write(b"half")
        raise RuntimeError("killed midway")
    assert store.ops == [("put", path)] and store.objects == {path: b"new\n"}  # untouched
    with pytest.raises(ValueError, match=r"config\.json: cannot append"):
        io.open_for_write(path, "a")


def test_workdir_lock_on_a_bucket_locks_nothing_and_warns_once(store, monkeypatch, caplog):
    monkeypatch.setattr(io, "_unlocked_schemes", set())
    with caplog.at_level(logging.WARNING, logger="jaxalign.io"):
        with io.WorkdirLock("mem://bucket/run"), io.WorkdirLock("mem://bucket/run/iter_000"):
            pass
    assert [r.getMessage() for r in caplog.records] == [
        "mem://bucket/run: a mem:// workdir cannot be locked (object stores have no flock); "
        "nothing guards it against a second run: start one run per workdir"]
    io.check_owner("mem://bucket/run")
    io.refuse_link("mem://bucket/run/metrics.jsonl")
    assert store.ops == []


PATHS = {  # case: (path, absolute, join with "a/b")
    "gs": ("gs://bucket/run", "gs://bucket/run", "gs://bucket/run/a/b"),
    "s3_trailing_slash": ("s3://b/x/", "s3://b/x/", "s3://b/x/a/b"),
    "local_relative": ("run", os.path.join(os.getcwd(), "run"), "run/a/b"),
    "local_colon": ("dir:x/run", os.path.join(os.getcwd(), "dir:x/run"), "dir:x/run/a/b"),
}


@pytest.mark.parametrize("path,absolute,joined", PATHS.values(), ids=PATHS.keys())
def test_urls_are_kept_whole(path, absolute, joined):
    assert io.is_url(path) == ("://" in path)
    assert io.absolute(path) == absolute and io.join(path, "a", "b") == joined


def test_real_epath_dispatch_on_gs(tmp_path, monkeypatch):
    """gs:// through etils.epath itself (mock_epath: its local backend, files under cwd)."""
    from etils.epath import testing
    monkeypatch.chdir(tmp_path)
    with testing.mock_epath():
        io.write_jsonl("gs://bucket/run/rows.jsonl", [{"x": 1}])
        assert io.read_jsonl("gs://bucket/run/rows.jsonl") == [{"x": 1}]
        assert io.listdir("gs://bucket/run") == ["rows.jsonl", "rows.jsonl.commit"]
        io.write_atomic("gs://bucket/run/c.json", "{}")
        assert io.read_json_object("gs://bucket/run/c.json") == {}
    assert (tmp_path / "gs:" / "bucket" / "run" / "rows.jsonl.commit").is_file()


# ---- the driver and the grow step on a bucket ----

def test_driver_phases_commit_and_resume_on_a_bucket(store):
    from jaxalign.algorithms.driver import Driver
    calls = []

    def fn(d):
        calls.append(d)
        io.write_jsonl(io.join(d, "rows.jsonl"), [{"d": d}])
        if len(calls) == 1:
            raise Killed("killed inside the phase")
        return {"n": 1}

    with Driver("mem://bucket/run", {"a": 1}) as drv:
        with pytest.raises(Killed):
            drv.phase(0, "build", fn)
        assert drv.summary(0, "build") is None  # its data is there, its summary is not
        assert drv.phase(0, "build", fn)["n"] == 1 and drv.phase(0, "build", fn)["n"] == 1
    assert calls == ["mem://bucket/run/iter_000/build"] * 2  # done once, never redone
    assert io.is_committed("mem://bucket/run/iter_000/build/summary.json")
    with Driver("mem://bucket/run", {"a": 2}, start_over=True):  # another config: deleted
        assert sorted(store.objects) == ["mem://bucket/run/run.json",
                                         "mem://bucket/run/run.json.commit"]
    assert not any(op == "rename" for op, _ in store.ops)


@pytest.fixture(scope="module")
def tiny_policy():
    """rest_tiny's 2-layer Llama with numpy-drawn weights (init_params would compile)."""
    from jaxalign.data import toy
    from jaxalign.models import param_shapes
    from tests.algorithms.rest_tiny import CFG
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype),
                          param_shapes(CFG))
    return (CFG, params), toy.word_tokenizer()


def test_grow_on_a_bucket_commits_shards_and_resumes_without_redoing_one(store, tiny_policy):
    from jaxalign.algorithms.grow import grow, read_shards
    policy, tok = tiny_policy
    prompts = ["the cat", "a dog ran", "the red mat", "one two"]
    scored = []

    def score(prompts_, completions, kill_after=None):
        if kill_after is not None and len(scored) == kill_after:
            raise Killed("killed in the second shard")
        scored.append(len(prompts_))
        return [float(len(c)) for c in completions]

    kw = dict(tokenizer=tok, n=2, shard_size=2, batch_size=2, score_id="len", seed=0,
              progress=False, sampler_kw=dict(max_len=24), max_new_tokens=4, temperature=1.0)
    want = read_shards(grow(prompts, policy, out_dir="mem://bucket/ref", score_fn=score, **kw))
    assert len(want) == 8 and scored == [4, 4]

    scored.clear()
    out = "mem://bucket/run/iter_000/grow"
    with pytest.raises(Killed):
        grow(prompts, policy, out_dir=out, score_fn=lambda p, c: score(p, c, kill_after=1), **kw)
    assert io.listdir(out) == ["grow.json", "grow.json.commit", "shard-00000-of-00002.jsonl",
                               "shard-00000-of-00002.jsonl.commit"]
    paths = grow(prompts, policy, out_dir=out, score_fn=score, **kw)
    assert scored == [4, 4]  # the restart sampled and scored the second shard only
    assert read_shards(paths) == want
    assert not any(op == "rename" for op, _ in store.ops)


def test_metrics_on_a_bucket_are_rewritten_whole_and_rewind(store):
    """metrics.jsonl on a bucket: no append (objects cannot), each write puts the whole file;
    a resumed writer reads what is there, and rewind drops the later steps."""
    from jaxalign.train.metrics import MetricWriter, read_jsonl

    w = MetricWriter("mem://bucket/run")
    for step in (1, 2, 3):
        w.write(step, {"loss": 1.0 / step})
    w.close()
    path = "mem://bucket/run/metrics.jsonl"
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    assert not any("tensorboard" in url for url in store.objects)  # not written on a bucket
    w = MetricWriter("mem://bucket/run")  # a resumed run, from the checkpoint of step 2
    w.rewind(2)
    w.write(3, {"loss": 0.25})
    w.close()
    assert [(r["step"], r["train/loss"]) for r in read_jsonl(path)] == [
        (1, 1.0), (2, 0.5), (3, 0.25)]
    assert {op for op, _ in store.ops} == {"put"}


def test_data_files_are_read_from_a_bucket(store):
    """Dataset readers take a bucket URL like a local path; a missing object names it."""
    from jaxalign.data.readers import read_examples

    io.write_atomic("mem://bucket/data/prompts.jsonl", '{"prompt": "a b"}\n{"prompt": "c"}\n')
    rows = list(read_examples("prompt", "mem://bucket/data/prompts.jsonl"))
    assert [r["prompt"] for r in rows] == ["a b", "c"]
    assert rows[1]["location"] == "mem://bucket/data/prompts.jsonl:2"
    with pytest.raises(FileNotFoundError, match="mem://bucket/data/none.jsonl"):
        list(read_examples("prompt", "mem://bucket/data/none.jsonl"))
