"""Exact resume after SIGKILL, clean stop on SIGTERM, and the non-finite-loss guard."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxalign.train.checkpoint import CheckpointMismatch, Checkpointer

STEPS = 12
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(workdir, steps=STEPS, *extra, kill_at=None):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("KILL_AT", None)
    if kill_at is not None:
        env["KILL_AT"] = str(kill_at)
    return subprocess.Popen([sys.executable, "-m", "tests.train.run_tiny", str(workdir),
                             str(steps), *map(str, extra)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


def _committed_steps(workdir):
    d = os.path.join(workdir, "checkpoints", "last")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.fixture(scope="module")
def reference_params(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    rc, out = _finish(_start(workdir))
    assert rc == 0, out
    return dict(np.load(workdir / "final_params.npz"))


def _wait_for_checkpoint(proc, workdir, at_least, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if any(s >= at_least for s in _committed_steps(workdir)):
            return True
        time.sleep(0.05)
    raise TimeoutError("no checkpoint appeared")


# Kill points drawn once at random from 1..STEPS-1 (fixed seed, so CI is reproducible): an odd
# step lands between checkpoints, an even one right after an asynchronous save was started.
KILL_POINTS = sorted(random.Random(0).sample(range(1, STEPS), 3))


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_sigkill_then_resume_is_bit_identical(reference_params, tmp_path, kill_at):
    rc, out = _finish(_start(tmp_path, kill_at=kill_at))
    assert rc == -signal.SIGKILL, out
    assert not os.path.exists(tmp_path / "final_params.npz")
    rc, out = _finish(_start(tmp_path))
    assert rc == 0, out
    resumed = dict(np.load(tmp_path / "final_params.npz"))
    assert resumed.keys() == reference_params.keys()
    for k in resumed:
        np.testing.assert_array_equal(resumed[k], reference_params[k], err_msg=k)
    leftovers = [n for n in os.listdir(tmp_path / "checkpoints" / "last") if "tmp" in n]
    assert not leftovers, leftovers


def test_sigterm_leaves_a_resumable_checkpoint(reference_params, tmp_path):
    proc = _start(tmp_path, 10_000)  # would run for a long time
    _wait_for_checkpoint(proc, tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    rc, out = _finish(proc)
    assert rc == 75, out  # EXIT_PREEMPTED: a scheduler re-queues the job
    stopped_at = max(_committed_steps(tmp_path))
    assert stopped_at >= 2
    assert not os.path.exists(tmp_path / "final_params.npz")
    # Continue the same run to STEPS: identical to never having stopped (if it stopped early).
    if stopped_at < STEPS:
        rc, out = _finish(_start(tmp_path))
        assert rc == 0, out
        resumed = dict(np.load(tmp_path / "final_params.npz"))
        for k in resumed:
            np.testing.assert_array_equal(resumed[k], reference_params[k], err_msg=k)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    rc, out = _finish(_start(tmp_path, STEPS, 5))
    assert rc != 0 and "FloatingPointError" in out and "step 5: loss is nan" in out, out
    assert os.path.exists(tmp_path / "nonfinite_batch_step5.npz")
    assert _committed_steps(tmp_path) == [2, 4]
    bad = np.load(tmp_path / "nonfinite_batch_step5.npz")
    assert np.isnan(bad["weight"]).all()


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    import jax
    from jaxalign.models import init_params
    from tests.train.batches import TINY
    params = init_params(TINY, jax.random.key(0))
    ckpt = Checkpointer(str(tmp_path), TINY, async_save=False)
    ckpt.save(1, {"params": params})
    ckpt.wait()
    other = TINY.replace(num_layers=3)
    with pytest.raises(CheckpointMismatch, match="num_layers=2.*num_layers=3"):
        Checkpointer(str(tmp_path), other).restore({"params": params})


def test_checkpoint_with_other_lora_settings_is_refused_by_name(tmp_path):
    """Same model, another train state (LoRA rank 8 saved, rank 4 or a full fine-tune asked):
    refused before any array is read, naming the parameters that differ."""
    import jax
    from jaxalign.models import init_params
    from jaxalign.train import lora
    from tests.train.batches import TINY
    params = init_params(TINY, jax.random.key(0))
    adapters = lambda rank: lora.init_lora(params, lora.LoraConfig(rank=rank, targets=("q",)),
                                           jax.random.key(1))
    ckpt = Checkpointer(str(tmp_path), TINY, async_save=False)
    ckpt.save(1, {"params": adapters(8)})
    ckpt.wait()
    with pytest.raises(CheckpointMismatch, match=r"LoRA rank.*params/layers/attn/q/a: saved "
                                                 r"\(2, 32, 8\), this run \(2, 32, 4\)"):
        Checkpointer(str(tmp_path), TINY).restore({"params": adapters(4)})
    with pytest.raises(CheckpointMismatch, match="params/layers/attn/q/a: only in the checkpoint"):
        Checkpointer(str(tmp_path), TINY).restore({"params": params})
    restored, _, _ = Checkpointer(str(tmp_path), TINY).restore({"params": adapters(8)})
    jax.tree.map(np.testing.assert_array_equal, restored["params"], adapters(8))
