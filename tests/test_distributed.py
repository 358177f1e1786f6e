"""jaxalign.distributed without a second process: argument checks, launcher detection, and the
runners that refuse several processes (the multi-process runs are tests/multihost/)."""

import pytest

from jaxalign import distributed

CLUSTER_VARS = ("SLURM_", "OMPI_", "TPU_WORKER_HOSTNAMES")


@pytest.fixture
def no_cluster(monkeypatch):
    """An environment with no launcher variables and no TPU device files."""
    import os
    for k in list(os.environ):
        if k.startswith(CLUSTER_VARS):
            monkeypatch.delenv(k)
    monkeypatch.setattr(distributed.glob, "glob", lambda pattern: [])
    return monkeypatch


@pytest.mark.parametrize("given, match", [
    (dict(coordinator_address="h:1"), "--num_processes, --process_id not given"),
    (dict(num_processes=2, process_id=0), "--coordinator_address not given"),
    (dict(coordinator_address="host0", num_processes=2, process_id=0), "expected host:port"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "not in \\[0, "),
], ids=["only-address", "no-address", "no-port", "id-out-of-range"])
def test_explicit_arguments_are_checked_before_anything_starts(given, match):
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**given)


def test_nothing_detected_runs_alone(no_cluster):
    assert distributed.detected_cluster() is None
    assert distributed.initialize() is False  # (jax.distributed never called)


@pytest.mark.parametrize("env, cluster", [
    (dict(SLURM_NTASKS="4", SLURM_JOB_ID="7", SLURM_PROCID="1", SLURM_LOCALID="0",
          SLURM_STEP_NODELIST="n[1-4]"), "slurm"),
    (dict(SLURM_NTASKS="1", SLURM_JOB_ID="7", SLURM_PROCID="0", SLURM_LOCALID="0",
          SLURM_STEP_NODELIST="n1"), None),  # a single-task job runs alone
    (dict(OMPI_COMM_WORLD_SIZE="2", OMPI_MCA_orte_hnp_uri="1.0;tcp://10.0.0.1:1"), "openmpi"),
    (dict(TPU_WORKER_HOSTNAMES="w0,w1"), "tpu"),
], ids=["slurm", "slurm-one-task", "openmpi", "tpu-workers"])
def test_launchers_are_detected_from_the_environment(no_cluster, env, cluster):
    for k, v in env.items():
        no_cluster.setenv(k, v)
    assert distributed.detected_cluster() == cluster


def test_tpu_vm_detected_from_its_device_files(no_cluster):
    no_cluster.setattr(distributed.glob, "glob",
                       lambda pattern: ["/dev/accel0"] if "accel" in pattern else [])
    assert distributed.detected_cluster() == "tpu"


def test_cli_names_missing_multiprocess_flags(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "jaxalign", "--config",
                          "experiments/dpo_toy.py:smoke", "--workdir", str(tmp_path),
                          "--num_processes=2", "--process_id=0"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "--coordinator_address not given" in out.stderr


def test_single_host_runners_refuse_several_processes(monkeypatch):
    import jax
    from absl import app
    from jaxalign import main
    from ml_collections import ConfigDict
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for algorithm in ("rest_gym", "cgpo_gym"):
        with pytest.raises(app.UsageError, match=f"{algorithm!r} runs on one process"):
            main.run_config(ConfigDict(dict(algorithm=algorithm)))


@pytest.fixture
def process_1_of_2(monkeypatch):
    """This process as process 1 of 2, whose peer (process 0) holds `peer[0]`: allgather gives
    [process 0's value, this one's], as JAX's does in process order."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    peer = [None]

    def allgather(x, tiled=False):
        parts = [np.asarray(peer[0](np.asarray(x))), np.asarray(x)]
        return np.concatenate(parts) if tiled else np.stack(parts)

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    return peer


def test_shares_split_contiguously_and_fillers_top_up(process_1_of_2):
    assert distributed.process_slice(8, "n") == slice(4, 8)
    with pytest.raises(ValueError, match="online.prompts_per_step = 5 does not split over 2 "
                                         "processes: use a multiple of 2"):
        distributed.process_slice(5, "online.prompts_per_step")
    # 5 items over 2 processes: 3 + 2, the second topped up with one filler
    assert distributed.process_share(list("abcde"), lambda j: f"filler{j}") == (
        ["d", "e", "filler0"], 2)


def test_gathers_put_the_processes_in_order_and_drop_fillers(process_1_of_2):
    import numpy as np
    process_1_of_2[0] = lambda mine: np.array([3]) if mine.shape == (1,) else mine * 10
    # gather_real: process 0 has 3 real rows of 3, this one 2 real rows of 3 (one filler)
    got = distributed.gather_real(np.array([1.0, 2.0, -1.0]), 2)
    assert got.tolist() == [10.0, 20.0, -10.0, 1.0, 2.0]
    assert distributed.agree_max([2, 7]).tolist() == [20, 70]  # (the peer holds 10x)

    import json
    theirs = json.dumps({"reward": [0.1, 0.2]}).encode()
    process_1_of_2[0] = lambda mine: (np.array([len(theirs)]) if mine.shape == (1,) else
                                      np.frombuffer(theirs.ljust(len(mine), b"\0"), np.uint8))
    parts = distributed.gather_objects({"reward": [0.30000000000000004]})
    assert parts == [{"reward": [0.1, 0.2]}, {"reward": [0.30000000000000004]}]  # exact floats
