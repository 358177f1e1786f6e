"""Issue #14, class 10: restart and write hygiene.

(a) a resumed run's metrics.jsonl and TensorBoard event files show each step once; (b) SIGTERM
raises `Preempted` after the checkpoint (exit code 75: tests/train/test_resume.py and
test_workdir_lock.py run it in a subprocess); (c) no write follows a symbolic link planted in a
workdir; (d) a workdir another user owns in a world-writable directory is refused.
"""

import glob
import os
import re
import signal
import struct

import pytest

from jaxalign import io
from jaxalign.algorithms.driver import Driver
from jaxalign.train.metrics import MetricWriter, read_jsonl
from jaxalign.train.trainer import LoopConfig, Preempted, Trainer


def tensorboard_view(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard shows the scalars of `logdir`: its own reader when
    installed, else the same rules by hand (files in name order; a SessionLog START at step s
    drops every earlier event of a step >= s, `EventAccumulator._CheckForRestartAndMaybePurge`).
    """
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
    except ImportError:
        ea = None
    if ea is not None:
        acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0})
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
                for tag in acc.Tags()["scalars"]}
    from tensorboardX.proto import event_pb2
    seen: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "*tfevents*"))):
        raw, pos = open(path, "rb").read(), 0
        while pos < len(raw):  # TFRecord: u64 length, u32 crc, data, u32 crc
            (n,), pos = struct.unpack("<Q", raw[pos:pos + 8]), pos + 12
            event = event_pb2.Event.FromString(raw[pos:pos + n])
            pos += n + 4
            if event.session_log.status == event_pb2.SessionLog.START:
                seen = {t: [(s, v) for s, v in items if s < event.step]
                        for t, items in seen.items()}
            for value in event.summary.value:
                seen.setdefault(value.tag, []).append((event.step, value.simple_value))
    return seen


def _log(workdir, run, steps, rewind=None):
    """One run of a MetricWriter: rewind (a resume), then rows of value run * 100 + step."""
    w = MetricWriter(workdir)
    if rewind is not None:
        w.rewind(rewind)
    for s in steps:
        w.write(s, {"loss": run * 100 + s})
        if s % 4 == 0:
            w.write(s, {"accuracy": run * 100 + s}, prefix="eval")
    w.close()


def _expect(workdir, last, runs):
    """Each step 0..last once in metrics.jsonl and in TensorBoard, from the run that logged it
    last (`runs`: [(run, first step it owns)])."""
    owner = lambda s: max(r for r, first in runs if first <= s)  # noqa: E731
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r] == [
        (s, owner(s) * 100 + s) for s in range(last + 1)]
    tb = tensorboard_view(os.path.join(workdir, "tensorboard"))
    assert tb["train/loss"] == [(s, owner(s) * 100 + s) for s in range(last + 1)]
    assert tb["eval/accuracy"] == [(s, owner(s) * 100 + s) for s in range(0, last + 1, 4)]


RESUMES = {
    # killed after logging step 7, resumed from the checkpoint of step 4
    "resumed_after_kill": ([(0, range(0, 8), None), (1, range(5, 11), 4)], [(0, 0), (1, 5)]),
    # killed before any checkpoint: the restart logs from step 0 again
    "restarted_from_scratch": ([(0, range(0, 4), None), (1, range(0, 6), -1)],
                               [(0, 0), (1, 0)]),
    "resumed_twice": ([(0, range(0, 8), None), (1, range(5, 7), 4), (2, range(6, 10), 5)],
                      [(0, 0), (1, 5), (2, 6)]),
}


@pytest.mark.parametrize("runs,owners", RESUMES.values(), ids=RESUMES.keys())
def test_a_resumed_run_logs_each_step_once(tmp_path, runs, owners):
    for run, steps, rewind in runs:  # all within a second: event files of one second kept apart
        _log(str(tmp_path), run, steps, rewind)
    _expect(str(tmp_path), max(runs[-1][1]), owners)


def test_training_resumed_after_a_crash_then_preempted(tmp_path):
    """The trainer end to end: a crash after step 6 (last checkpoint 4), a resume preempted by
    SIGTERM in step 7's callback, a resume to the end: each step is logged once."""
    import jax

    from jaxalign.models import init_params
    from jaxalign.objectives import preference_objective
    from jaxalign.train.optim import make_optimizer
    from jaxalign.train.trainer import run_loop
    from tests.train.batches import TINY
    from tests.train.run_tiny import SyntheticIterator

    params = init_params(TINY, jax.random.key(0))
    optimizer, _ = make_optimizer(optimizer="rmsprop", lr=1e-3, warmup_steps=2)
    objective = preference_objective(TINY, loss="dpo.sigmoid", loss_kwargs={"beta": 0.1},
                                     ref_params=params)
    loop = LoopConfig(workdir=str(tmp_path), total_steps=8, checkpoint_every=4, log_every=1,
                      progress_bar=False)
    programs = {}  # one trace for the three runs

    def run(on_step=None):
        with Trainer(loop, objective=objective, optimizer=optimizer, params=params,
                     model_cfg=TINY, programs=programs) as t:
            run_loop(t, SyntheticIterator(), on_step)
            return int(t.state.step)

    def crash(step):
        if step == 6:
            raise RuntimeError("crash")

    def terminate(step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RuntimeError, match="crash"):
        run(crash)
    with pytest.raises(Preempted) as stopped:
        run(terminate)
    assert (stopped.value.code, stopped.value.step) == (75, 7)
    assert os.path.isdir(tmp_path / "checkpoints" / "last" / "7")
    assert run() == 8
    rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 9))
    tb = tensorboard_view(str(tmp_path / "tensorboard"))
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 9))


# ---- (c) no write through a planted link ----

def _metrics(d):
    MetricWriter(d)


def _metrics_rewind(d):
    MetricWriter(d).rewind(3)


def _committed(d):
    io.write_json(os.path.join(d, "summary.json"), {"a": 1})


def _run_json(d):
    Driver(d, {"a": 1})


def _trainer(d):
    Trainer(LoopConfig(workdir=d, total_steps=1), objective=None, optimizer=None, params=None,
            model_cfg=None)


LINKS = {  # case: (link inside the workdir, what writes there)
    "metrics.jsonl": ("metrics.jsonl", _metrics),
    "metrics_rewind_temp": ("metrics.jsonl.tmp", _metrics_rewind),  # io.write_atomic's temp
    "tensorboard_dir": ("tensorboard", _metrics),
    "committed_data": ("summary.json", _committed),
    "committed_marker": ("summary.json.commit", _committed),
    "run.json": ("run.json", _run_json),
    "trainer_metrics": ("metrics.jsonl", _trainer),
    "checkpoints_dir": ("checkpoints", _trainer),
    "checkpoints_last": ("checkpoints/last", _trainer),
}


@pytest.mark.parametrize("link,write", LINKS.values(), ids=LINKS.keys())
def test_no_write_through_a_planted_link(tmp_path, link, write):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("precious")
    d = tmp_path / "run"
    (d / link).parent.mkdir(parents=True, exist_ok=True)
    target = victim if link in ("tensorboard", "checkpoints", "checkpoints/last") else (
        victim / "file")
    os.symlink(target, d / link)
    with pytest.raises(ValueError, match=rf"{re.escape(str(d / link))} is a symbolic link"):
        write(str(d))
    assert os.listdir(victim) == ["file"] and (victim / "file").read_text() == "precious"


# ---- (d) a workdir another user could tamper with ----

OWNERS = {  # case: (workdir under a sticky world-writable dir, as another user?, refused)
    "another_users_dir": ("run", True, "run belongs to user"),
    "another_users_link": ("link", True, "link belongs to user"),
    "another_users_parent": ("run/sub", True, "run belongs to user"),
    "own_dir": ("run", False, None),
    "own_new_dir": ("new/sub", False, None),
}


@pytest.mark.parametrize("workdir,foreign,refused", OWNERS.values(), ids=OWNERS.keys())
def test_workdir_of_another_user_in_a_shared_dir(tmp_path, monkeypatch, workdir, foreign,
                                                 refused):
    shared = tmp_path / "shared"  # like /tmp: world-writable, sticky
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (shared / "run").mkdir()
    os.symlink(shared / "run", shared / "link")
    if foreign and os.getuid() == 0:  # root: give them to another user
        for p in (shared / "run", shared / "link"):
            os.lchown(p, 4321, 4321)
    elif foreign:  # the files this user made look like another user's
        real = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: real + 1)
    lock = io.WorkdirLock(shared / workdir)
    if refused:
        with pytest.raises(PermissionError, match=rf"{re.escape(str(shared))}/{refused} .* "
                                                  rf"world-writable directory {shared}"):
            lock.acquire()
    else:
        lock.acquire().release()
