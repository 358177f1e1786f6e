"""The iteration driver of the self-improvement loops (ReST, SPPO, CGPO): sample, score, build a
dataset, train, repeat; every phase resumable and everything it makes kept on disk.

    drv = Driver(workdir, config.to_dict())        # refuses a workdir of another config
    for t in range(iterations):
        grown = drv.phase(t, "grow", lambda d: grow_phase(d, sampler, prompts, n=4, ...))
        records = read_records(drv.dir(t, "grow"), grown)
        scored = drv.phase(t, "score", lambda d: score_phase(d, records, score, chunk_prompts=64))
        built = drv.phase(t, "build_0", lambda d: build_phase(d, rows, locations, meta))
        trained = drv.phase(t, "train_0", lambda d: train_phase(d, Trainer(...workdir=d...), it))

`jaxalign.algorithms.rest.run_rest` composes them into ReST; SPPO and CGPO compose the same
phases (their score steps return win rates or judge verdicts; their builders make preference
or group rows; their reference-update rule is the caller's: e.g. the iteration's starting
policy as SPPO's frozen reference).

Layout: `<workdir>/run.json` (the config), `<workdir>/iter_000/<phase>/` with the phase's data
and its `summary.json`. A phase whose summary is committed is done and is never run again;
`drv.phase` then returns the summary it wrote. Inside a phase, work goes in fixed chunks (grow
shards, scoring chunks of whole prompt groups, training steps between checkpoints), each
committed on its own, so a resumed phase skips what is done and sees the same shapes as an
uninterrupted one. Sampling keys depend on (seed, prompt id), the training rng on the step,
the data order on (seed, epoch): a run killed at any moment (SIGKILL) and restarted with the
same command ends with the same records and bit-identical parameters.

Commit protocol (`jaxalign.io`): the data first, then a marker holding its size and sha256; no
rename, so it holds on object stores. Checkpoints are Orbax's (its own commit protocol).

Who writes what on several hosts (`jax.process_count() > 1`): every process samples its slice
of each grow shard and writes it as its own part (`grow.py`); scoring, building and every
summary, record file and marker outside the grow parts are written by process 0 only, after
which all processes read them; checkpoints are written by all processes together (Orbax);
metrics by process 0. A single-process run writes everything itself.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxalign import distributed, io
from jaxalign.algorithms.grow import grow, read_shards

# Config keys that may change between a run and its restart (where results go, how they look).
RESTART_SAFE = ("workdir", "start_over", "loop.progress_bar", "progress_bar")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """The flattened keys whose values differ (RESTART_SAFE keys ignored), sorted."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")
                  and k not in RESTART_SAFE and not k.endswith(".progress_bar"))


class Driver:
    """Per-iteration directories, committed phase summaries and the run's config check.

    config: the run's config as plain JSON-able dict. A workdir that holds a run of another
      config is refused, naming the keys that differ, unless `start_over` (then the old run's
      iterations and run.json are deleted first).
    on_event: called with names like "grow:shard", "score:chunk", "build", "train:step",
      "phase:<name>" as work is committed (tests kill the process there).
    The driver holds its workdir (`io.WorkdirLock`: a second process is refused, naming the
    first one's host and pid) until `close()`, the end of a `with` block, or its collection.
    """

    def __init__(self, workdir: str, config: dict, *, start_over: bool = False,
                 on_event: Callable[[str], Any] | None = None):
        self.workdir = io.absolute(workdir)
        lock = io.WorkdirLock(self.workdir, jax.process_index()).acquire()
        self._unlock = weakref.finalize(self, lock.release)
        self.on_event = on_event or (lambda name: None)
        self.writer = jax.process_index() == 0
        config = json.loads(json.dumps(config, default=str))
        path = os.path.join(self.workdir, "run.json")
        if io.is_committed(path):
            diff = config_diff(io.read_json(path), config)
            if diff and not start_over:
                raise ValueError(
                    f"{self.workdir} holds a run of another config; keys that differ: "
                    f"{', '.join(diff)}. Use another workdir, or pass "
                    "--config.start_over=True to delete that run and start over.")
            if diff and self.writer:
                for name in io.listdir(self.workdir):
                    if name.startswith("iter_") or name.startswith("run.json"):
                        p = os.path.join(self.workdir, name)
                        io.rmtree(p) if io.isdir(p) else io.remove(p)
        if not io.is_committed(path) and self.writer:
            io.write_json(path, config)

    def close(self) -> None:
        """Releases the workdir."""
        self._unlock()

    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def dir(self, iteration: int, phase: str) -> str:
        return os.path.join(self.workdir, f"iter_{iteration:03d}", phase)

    def summary(self, iteration: int, phase: str) -> dict | None:
        """The committed summary of a phase, None while it is not done."""
        path = os.path.join(self.dir(iteration, phase), "summary.json")
        return io.read_json(path) if io.is_committed(path) else None

    def phase(self, iteration: int, phase: str, fn: Callable[[str], dict]) -> dict:
        """Runs `fn(phase_dir) -> summary` unless the phase is done; returns its summary."""
        done = self.summary(iteration, phase)
        if done is not None:
            return done
        d = self.dir(iteration, phase)
        io.makedirs(d)
        t0 = time.perf_counter()
        summary = dict(fn(d), seconds=time.perf_counter() - t0)
        if self.writer:
            io.write_json(os.path.join(d, "summary.json"), summary)
        distributed.barrier("jaxalign_phase")  # what process 0 wrote, every process now reads
        self.on_event(f"phase:{phase}")
        return summary


# ---- phases ----

def grow_phase(d: str, sampler, prompts: Sequence[dict], *, n: int, seed: int, shard_size: int,
               batch_size: int, on_event: Callable[[str], Any] = lambda e: None,
               **sampling) -> dict:
    """n samples per prompt from `sampler` into committed shards (`grow.grow`)."""
    t0 = time.perf_counter()
    paths = grow(list(prompts), sampler, out_dir=d, n=n, seed=seed, shard_size=shard_size,
                 batch_size=batch_size, progress=False,
                 on_shard=lambda path: on_event("grow:shard"), **sampling)
    records = read_shards(paths)
    tokens = sum(r["length"] for r in records)
    seconds = time.perf_counter() - t0
    return {"shards": [os.path.basename(p) for p in paths], "records": len(records),
            "tokens": tokens, "sample_seconds": seconds,
            "tokens_per_s": tokens / max(seconds, 1e-9)}


def grow_policy(d: str, sampler, params, prompts: Sequence[dict], s, *, seed: int,
                on_event: Callable[[str], Any] = lambda e: None) -> dict:
    """`grow_phase` from `params` (set on `sampler`) with a loop's settings `s`: its samples
    per prompt, shard_size, sample_batch, max_new_tokens, temperature and top_p."""
    sampler.set_params(params)
    return grow_phase(d, sampler, prompts, n=s.samples, seed=seed, shard_size=s.shard_size,
                      batch_size=s.sample_batch, on_event=on_event,
                      max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)


def _where(path: str) -> str:
    """A phase file's path from its run's workdir ("iter_001/grow/shard-...jsonl")."""
    d = os.path.dirname(io.absolute(path))
    return os.path.relpath(path, os.path.dirname(os.path.dirname(d)))


def read_records(d: str, summary: dict) -> list[dict]:
    """A grow phase's records, each with `_loc` ("iter_001/grow/shard-...jsonl:line")."""
    out = []
    for name in summary["shards"]:
        path = os.path.join(d, name)
        for i, r in enumerate(read_shards([path]), 1):
            r["_loc"] = f"{_where(path)}:{i}"
            out.append(r)
    return out


# (records of whole prompt groups) -> {column: values [N]}: rewards, win rates, judge verdicts
ScoreStep = Callable[[list[dict]], dict[str, np.ndarray]]


def prompt_groups(records: Sequence[dict]) -> list[list[dict]]:
    """Consecutive records of the same prompt id, as grow and `with_data` lay them out."""
    groups: list[list[dict]] = []
    for r in records:
        if groups and groups[-1][0]["id"] == r["id"]:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def score_phase(d: str, records: Sequence[dict], score: ScoreStep, *, chunk_prompts: int,
                required: Sequence[str] = (),
                on_event: Callable[[str], Any] = lambda e: None) -> dict:
    """Scores whole prompt groups, `chunk_prompts` at a time, into committed `scored-*.jsonl`.
    With several processes each scores its contiguous share of every chunk's groups, and
    process 0 writes the chunk's file from the gathered columns.

    Each record is written back with the score step's columns added. A `required` column (or
    one an earlier chunk had) that is missing, of the wrong length or not finite is an error
    naming the record (its grow file and line).
    """
    groups = prompt_groups(records)
    chunks = [groups[i:i + chunk_prompts] for i in range(0, len(groups), chunk_prompts)]
    names, t0, columns = [], time.perf_counter(), None
    for k, chunk in enumerate(chunks):
        name = f"scored-{k:05d}-of-{len(chunks):05d}.jsonl"
        names.append(name)
        path = os.path.join(d, name)
        if io.is_committed(path):
            continue
        # several processes: each scores its share of the chunk's prompt groups (a score step
        # may be collective: each calls it once per chunk, a filler group's scores dropped)
        mine, real = distributed.process_share(chunk, lambda j: chunk[0])
        recs = [r for g in mine for r in g]
        cols = score(recs)
        if not isinstance(cols, dict):
            raise ValueError(f"the score step must return {{column: values}}, got a "
                             f"{type(cols).__name__} for the records from "
                             f"{recs[0].get('_loc', 'memory')}")
        columns = columns or sorted(set(cols) | set(required))
        _check_scores(cols, recs, columns)
        n = sum(len(g) for g in mine[:real])
        parts = distributed.gather_objects({c: [float(x) for x in cols[c][:n]] for c in columns})
        cols = {c: [x for part in parts for x in part[c]] for c in columns}
        rows = [{**{k: v for k, v in r.items() if k != "_loc"},
                 **{c: cols[c][i] for c in columns}}
                for i, r in enumerate(r for g in chunk for r in g)]
        if jax.process_index() == 0:
            io.write_jsonl(path, rows)
        on_event("score:chunk")
    distributed.barrier("jaxalign_score")
    scored = read_scored(d, {"files": names})
    stats = {f"mean/{c}": float(np.mean([r[c] for r in scored]))
             for c in sorted(set(scored[0]) - set(records[0]) - {"_loc"})} if scored else {}
    seconds = time.perf_counter() - t0
    return {"files": names, "records": len(scored), "score_seconds": seconds,
            "records_per_s": len(scored) / max(seconds, 1e-9), **stats}


def _check_scores(cols: dict, recs: list[dict], columns: list[str]) -> None:
    """Every column a finite number per record (the scored files are strict JSON), else a
    ValueError naming the record: its prompt id, sample and grow file:line."""
    where = recs[0].get("_loc", f"prompt id {recs[0].get('id')!r}")
    for c in columns:
        if c not in cols:
            raise ValueError(f"score step returned no {c!r} column (it returned "
                             f"{sorted(cols)}) for the records from {where}")
        try:
            v = np.asarray(cols[c], np.float64)
        except (TypeError, ValueError):
            v = np.asarray([_number(x) for x in np.asarray(cols[c], object).reshape(-1)])
        if v.shape != (len(recs),):
            raise ValueError(f"score step column {c!r} has shape {v.shape} for {len(recs)} "
                             f"records (from {where})")
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            r, x = recs[bad[0]], cols[c][bad[0]]
            x = v[bad[0]] if isinstance(x, (int, float, np.number)) else repr(x)
            raise ValueError(f"score step gave {c}={x} for the record of prompt id "
                             f"{r.get('id')!r}, sample {r.get('sample')} "
                             f"({r.get('_loc', 'no file')}); {bad.size} of {len(recs)} in this "
                             f"chunk are not finite numbers")


def _number(x) -> float:
    """x as a float; NaN for what is not a number (then named by `_check_scores`)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def read_scored(d: str, summary: dict) -> list[dict]:
    out = []
    for name in summary["files"]:
        path = os.path.join(d, name)
        for i, r in enumerate(io.read_jsonl(path), 1):
            r["_loc"] = f"{_where(path)}:{i}"
            out.append(r)
    return out


def build_phase(d: str, rows: Sequence[dict], locations: Sequence[str], meta: dict,
                on_event: Callable[[str], Any] = lambda e: None) -> dict:
    """Writes a dataset's rows (token ids and columns, and `_from`: the record each came from)
    as committed rows.jsonl."""
    if jax.process_index() == 0:
        io.write_jsonl(os.path.join(d, "rows.jsonl"),
                       ({**r, "_from": loc} for r, loc in zip(rows, locations)))
    on_event("build")
    return {"rows": len(rows), **meta}


def read_rows(d: str) -> tuple[list[dict], list[str]]:
    """(rows, their origins) of a build phase."""
    rows = io.read_jsonl(os.path.join(d, "rows.jsonl"))
    return [{k: v for k, v in r.items() if k != "_from"} for r in rows], [r["_from"]
                                                                           for r in rows]


def save_policy(d: str, params) -> None:
    """The policy a train phase hands on, as an Orbax checkpoint in `<d>/policy`."""
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(io.join(io.absolute(d), "policy"), params, force=True)


def load_policy(d: str, like):
    """The params `save_policy` wrote, placed like `like` (a tree of arrays or abstract)."""
    import orbax.checkpoint as ocp
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                         sharding=getattr(x, "sharding", None)),
                          like)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(io.join(io.absolute(d), "policy"), target)


def train_phase(d: str, trainer, train_iter, *, select: str = "last",
                on_event: Callable[[str], Any] = lambda e: None, hand_on: dict | None = None
                ) -> dict:
    """Trains with `trainer` (a `jaxalign.train.Trainer` whose workdir is `d`, so a killed phase
    resumes from its last checkpoint) over `train_iter`, then saves the policy it hands on: the
    best checkpoint's params by `loop.best_metric` (`select="best"`, the ReST paper's choice) or
    the last. `hand_on["params"]` receives them, so the caller need not read them back.
    SIGTERM: the trainer's `Preempted` propagates (after its checkpoint; the phase stays
    undone, so the same command resumes it)."""
    from jaxalign.train.trainer import run_loop
    if select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got {select!r}")
    t0 = time.perf_counter()
    with trainer as t:
        run_loop(t, train_iter, on_step=lambda step: on_event("train:step"))
        params = t.restore_best() if select == "best" else t.params
        best = _best_step(t) if select == "best" else None
    distributed.barrier("jaxalign_train")  # process 0's metrics.jsonl, closed, for every reader
    io.refuse_link(os.path.join(d, "policy"))  # Orbax's force=True would delete a link's target
    save_policy(d, params)
    if hand_on is not None:
        hand_on["params"] = params
    metrics = [json.loads(line)
               for line in io.read_text(os.path.join(d, "metrics.jsonl")).splitlines()]
    evals = [m for m in metrics if any(k.startswith("eval/") for k in m)]
    train_rows = [m for m in metrics if "train/loss" in m]
    selected = next((m for m in evals if m["step"] == best), evals[-1] if evals else {})
    return {"steps": t.loop.total_steps, "selected_step": best, "train_seconds":
            time.perf_counter() - t0, "selected_eval": selected,
            "evals": evals,
            "tokens_per_s": float(np.median([m["train/tokens_per_s"] for m in train_rows]))
            if train_rows else 0.0}


def _best_step(t) -> int | None:
    best = t.ckpt.best
    return None if best is None else best.latest_step()
