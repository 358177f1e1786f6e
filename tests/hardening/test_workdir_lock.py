"""Issue #14, class 4: one run per workdir (`jaxalign.io.WorkdirLock`).

A second process on a workdir is refused naming the first one's host and pid; a lock left by a
dead process of this host is taken over with a warning, one of another host is refused with how
to remove it; one process may lock the same directory again (entry point, driver, trainers).
"""

import gc
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from jaxalign import io
from jaxalign.algorithms.driver import Driver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = socket.gethostname()


def _record(d):
    with open(os.path.join(d, ".lock")) as fh:
        text = fh.read()
    return json.loads(text) if text else None


def _plant(d, record):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, ".lock"), "w") as fh:
        fh.write(record if isinstance(record, str) else json.dumps(record))


def reentrant(d, caplog):
    """The entry point, the driver and a trainer of a phase dir, all in one process."""
    with io.WorkdirLock(d):
        with io.WorkdirLock(d), io.WorkdirLock(os.path.join(d, "iter_000", "train_0")):
            with Driver(d, {"a": 1}):
                assert _record(d)["pid"] == os.getpid()
        assert _record(d)["pid"] == os.getpid()  # still held by the outer lock
    assert _record(d) is None  # a clean release leaves no holder behind
    assert not caplog.records


def stale_same_host(d, caplog):
    _plant(d, {"host": HOST, "pid": 2**22 + 7, "started": "yesterday"})
    with io.WorkdirLock(d):
        assert _record(d)["pid"] == os.getpid()
    assert re.search(rf"taking over the lock of pid {2**22 + 7} on host {re.escape(HOST)}",
                     caplog.text)


def stale_other_host(d, caplog):
    _plant(d, {"host": "gpu-node-7", "pid": 4242, "started": "yesterday"})
    with pytest.raises(io.WorkdirBusy, match=r"pid 4242 on host gpu-node-7.*cannot tell whether"
                                             rf".*delete {re.escape(d)}/\.lock"):
        io.WorkdirLock(d).acquire()
    assert _record(d)["host"] == "gpu-node-7"  # left as it was for whoever checks


def torn_record(d, caplog):
    _plant(d, '{"host": "')
    with io.WorkdirLock(d):
        pass
    assert "unreadable record" in caplog.text


def planted_link(d, caplog):
    victim = d + "-victim"
    with open(victim, "w") as fh:
        fh.write("precious")
    os.makedirs(d)
    os.symlink(victim, os.path.join(d, ".lock"))
    with pytest.raises(ValueError, match=rf"{re.escape(d)}/\.lock is a symbolic link"):
        io.WorkdirLock(d).acquire()
    assert open(victim).read() == "precious"


def failed_driver_releases(d, caplog):
    """A driver whose construction fails (another config) leaves the workdir free."""
    Driver(d, {"a": 1}).close()
    with pytest.raises(ValueError, match="keys that differ: a"):
        Driver(d, {"a": 2})
    gc.collect()
    assert _record(d) is None


def process_index(d, caplog):
    """Process i > 0 of a multi-host run locks its own file."""
    with io.WorkdirLock(d, process_index=3) as lock:
        assert lock.path == os.path.join(d, ".lock.3")
        assert not os.path.exists(os.path.join(d, ".lock"))


@pytest.mark.parametrize("case", [reentrant, stale_same_host, stale_other_host, torn_record,
                                  planted_link, failed_driver_releases, process_index],
                         ids=lambda f: f.__name__)
def test_workdir_lock(case, tmp_path, caplog):
    case(str(tmp_path / "run"), caplog)


HOLD = """
import sys, time
from jaxalign import io
io.WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""

# The entry point with a runner that reports who holds the lock, then is preempted.
CLI = """
import json, os, sys
from jaxalign import main
from jaxalign.train.trainer import Preempted

def run_config(config, dry_run=False):
    holder = json.load(open(os.path.join(config.workdir, ".lock")))
    print("held by me:", holder["pid"] == os.getpid(), flush=True)
    raise Preempted(3, config.workdir)

main.run_config = run_config
sys.argv = ["jaxalign", "--config", "experiments/dpo_toy.py:smoke", "--workdir", sys.argv[1]]
main.cli()
"""


def test_second_process_is_refused_then_takes_over(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    d = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "-c", HOLD, d], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        held = rf"in use by another run: pid {first.pid} on host {re.escape(HOST)} \(started "
        with pytest.raises(io.WorkdirBusy, match=held):
            io.WorkdirLock(d).acquire()
        with pytest.raises(io.WorkdirBusy, match=held):
            Driver(d, {})
    finally:
        first.kill()
        first.wait()
    # The entry point takes the dead process's lock over, holds it while the runner runs, and
    # a preempted run exits with 75 and one line saying so.
    out = subprocess.run([sys.executable, "-c", CLI, d], cwd=ROOT, env=env, text=True,
                         capture_output=True, timeout=120)
    assert out.returncode == 75, out.stderr[-3000:]
    assert f"taking over the lock of pid {first.pid} on host {HOST}" in out.stderr
    assert "held by me: True" in out.stdout
    assert (f"jaxalign: preempted (SIGTERM) after saving the checkpoint of step 3 in {d}; run "
            "the same command again to resume (exit code 75)") in out.stderr.splitlines()
    assert _record(d) is None  # released on the way out
