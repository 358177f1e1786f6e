"""Multi-process runs on CPU: 2 processes x 4 fake devices, coordinated by `jax.distributed` on
localhost (gloo collectives), against the single-process 8-device run of the same config.

Each process is `tests/multihost/worker.py`; free ports per test (parallel workers never
collide) and a 30 s heartbeat (a loaded 2-core CI machine can stall a process for seconds),
so a failed peer ends a run in about a minute.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.multihost import worker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(mode: str, workdir: str, action: str = "", n: int = 2) -> list[tuple[int, str]]:
    """Runs the n processes of one multi-process run; [(exit code, output)] in process order."""
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.multihost.worker", mode, workdir, str(i), str(n),
         str(port)] + ([action] if action else []), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True) for i in range(n)]
    out = []
    try:
        for p in procs:
            text, _ = p.communicate(timeout=TIMEOUT_S)
            out.append((p.returncode, text))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return out


def tail(out: list[tuple[int, str]]) -> str:
    """Each process's first error (a Python traceback or an absl check failure: what went wrong
    first, before the peers' aborts that follow it) and the end of its output."""
    def first_error(text: str) -> str:
        at = [i for i in (text.find("Traceback (most recent call last)"),
                          text.find("Check failed"), text.find("Fatal Python error"))
              if i >= 0]
        return text[min(at):min(at) + 3000] if at else ""
    return "\n".join(f"--- process {i} (exit {rc}); first error:\n{first_error(text)}\n"
                     f"--- its last lines:\n{text[-2000:]}" for i, (rc, text) in enumerate(out))


def test_dpo_two_processes_preempted_killed_and_resumed(tmp_path):
    """`python -m jaxalign` on 2 processes: SIGTERM on process 1 alone stops both with a
    checkpoint (exit 75); a restart is SIGKILLed after step KILL_AT; a second restart ends with
    parameters bit-identical to an uninterrupted 2-process run, and equal within float
    rounding to the single-process 8-device run (same mesh; the gradient all-reduce adds the
    8 devices' parts in another order across processes, gloo, than within one)."""
    from jaxalign.algorithms import run_dpo
    from jaxalign.train.trainer import EXIT_PREEMPTED

    out = launch("dpo", str(tmp_path / "uninterrupted"))
    assert [rc for rc, _ in out] == [0, 0], tail(out)
    whole = np.load(tmp_path / "uninterrupted" / "final.npz")

    work = str(tmp_path / "two")
    out = launch("dpo", work, "sigterm@1")
    assert [rc for rc, _ in out] == [EXIT_PREEMPTED] * 2, tail(out)
    assert all("preempted (SIGTERM) after saving the checkpoint of step" in t for _, t in out)
    saved = sorted(int(s) for s in os.listdir(os.path.join(work, "checkpoints", "last"))
                   if s.isdigit())
    assert saved and saved[-1] < worker.KILL_AT, saved  # (the sync point is a step or two on)
    out = launch("dpo", work, f"kill@{worker.KILL_AT}")
    # the first to die takes the other down, by its own SIGKILL or by the lost peer (abort)
    assert -signal.SIGKILL in [rc for rc, _ in out] and all(rc for rc, _ in out), tail(out)
    assert not os.path.exists(os.path.join(work, "final.npz"))
    out = launch("dpo", work)
    assert [rc for rc, _ in out] == [0, 0], tail(out)
    resumed = np.load(os.path.join(work, "final.npz"))
    assert sorted(resumed.files) == sorted(whole.files)
    assert all(np.array_equal(whole[k], resumed[k]) for k in whole.files)
    # metrics written once, by process 0: every step one row, the resumed ones included
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             open(os.path.join(work, "metrics.jsonl")) if '"train/loss"' in line]
    assert steps == list(range(1, worker.STEPS + 1)), steps

    _, state = run_dpo.run(worker.mode_config(str(tmp_path / "one")))
    one = worker.flat_params(state.params)
    assert sorted(one) == sorted(whole.files)
    for k in one:
        np.testing.assert_allclose(whole[k], one[k], rtol=0, atol=1e-6, err_msg=k)


def test_grow_two_processes_writes_each_record_once_equal_to_one_process(tmp_path):
    """The grow step on 2 processes (each samples its slice of every shard, 3 + 2 prompts of a
    shard of 5, and commits its own part): the union of the parts is the single-process run's
    records (same tokens; log-probs within float tolerance), each record written once. Then the
    driver's score phase, each process scoring its share of every chunk: the scored files are
    the single-process run's."""
    from jaxalign.algorithms.grow import read_shards

    out = launch("grow", str(tmp_path / "two"))
    assert [rc for rc, _ in out] == [0, 0], tail(out)
    grow_dir = tmp_path / "two" / "grow"
    parts = sorted(f for f in os.listdir(grow_dir) if ".part-" in f and not f.endswith(".commit"))
    assert parts == [f"shard-{k:05d}-of-00002.jsonl.part-{p:05d}-of-00002"
                     for k in range(2) for p in range(2)]
    paths, summary, calls = worker.run_grow(str(tmp_path / "one"))
    one = read_shards(paths)
    two = read_shards([str(grow_dir / os.path.basename(p)) for p in paths])
    key = lambda r: (r["id"], r["sample"])  # noqa: E731
    assert len({key(r) for r in two}) == len(two) == len(one) == 10 * worker.GROW_SETTINGS["n"]
    assert [key(r) for r in two] == [key(r) for r in one]  # the same order, too
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"] and a["completion"] == b["completion"], key(a)
        np.testing.assert_allclose(a["logprobs"], b["logprobs"], atol=1e-5)

    # the score phase: each process scored its share of every chunk; process 0 wrote the files,
    # the single-process run's records with the same scores, in the same order
    assert calls == 4 and len(summary["files"]) == 4  # 10 prompts, 3 per chunk
    assert all("score calls: 4" in text for _, text in out), tail(out)
    for name in summary["files"]:
        one_rows = [json.loads(x) for x in open(tmp_path / "one" / "scored" / name)]
        two_rows = [json.loads(x) for x in open(tmp_path / "two" / "scored" / name)]
        assert [(r["id"], r["sample"], r["reward"], r["length"]) for r in two_rows] == \
            [(r["id"], r["sample"], r["reward"], r["length"]) for r in one_rows], name


@pytest.mark.parametrize("mode", ["rloo", "cgpo", "reward_bt"])
def test_runner_two_processes_equal_to_one_process(tmp_path, mode):
    """RLOO and CGPO from files (`python -m jaxalign`, the toy smoke configs: random reward
    models and, for CGPO, an LLM judge and two tasks) on 2 processes, each sampling, scoring and
    judging its share of every step's prompts: the rollout metrics and the final parameters are
    the single-process 8-device run's (within float rounding), each step's metrics written once.
    The Bradley-Terry reward runner likewise, with its held-out accuracy over every process's
    rows and its HF export written by process 0 equal to the single-process export."""
    from jaxalign import main

    out = launch(mode, str(tmp_path / "two"))
    assert [rc for rc, _ in out] == [0, 0], tail(out)
    two = np.load(tmp_path / "two" / "final.npz")
    result = main.run_config(worker.mode_config(str(tmp_path / "one"), mode))
    one = worker.flat_params(result["state"].params if mode == "reward_bt" else result["params"])
    assert sorted(one) == sorted(two.files)
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=0, atol=1e-5, err_msg=k)

    if mode == "reward_bt":
        from jaxalign.models.safetensors_io import SafetensorsFile
        accuracy = [t for _, t in out][0].split("held-out pairwise accuracy: ")[1].split()
        assert accuracy[:3] == f"{result['initial_eval_accuracy']:.3f} -> " \
            f"{result['eval_accuracy']:.3f}".split(), accuracy
        files = [sorted(os.listdir(w / "hf_export")) for w in (tmp_path / "one", tmp_path / "two")]
        assert files[0] == files[1] and "model.safetensors" in files[0], files
        a, b = (SafetensorsFile(str(w / "hf_export" / "model.safetensors"))
                for w in (tmp_path / "one", tmp_path / "two"))
        assert sorted(a.keys()) == sorted(b.keys()) and "score.weight" in a.keys()
        for k in a.keys():
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=k)
        return

    def rollout_rows(workdir):
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        return [r for r in rows if any(k.startswith("rollout/") for k in r)]
    rows_two, rows_one = rollout_rows(tmp_path / "two"), rollout_rows(tmp_path / "one")
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] and rows_one
    for a, b in zip(rows_one, rows_two):
        for k, v in a.items():  # every reward, KL, violation and loss (not the timings)
            if k.startswith("rollout/") and "second" not in k and "per_s" not in k:
                np.testing.assert_allclose(b[k], v, rtol=1e-4, atol=1e-5, err_msg=k)


def test_best_and_last_checkpoints_of_one_step_at_once(tmp_path):
    """The final step is saved to "best" and "last" together. Orbax keys a save's barriers by the
    step alone, so unless each manager names its own (`Checkpointer`'s barrier prefixes),
    process 0 waits at one barrier twice and aborts ("Barrier ... is already ongoing", the CI
    failure of a loaded machine): here process 1 reaches each of those barriers 3 s late, so
    both of process 0's saves wait at theirs at once."""
    out = launch("ckpt", str(tmp_path))
    assert [rc for rc, _ in out] == [0, 0] and all("saved" in t for _, t in out), tail(out)
    for name in ("best", "last"):
        assert os.listdir(tmp_path / "checkpoints" / name) == ["1"], name

