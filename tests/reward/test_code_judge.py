"""The sandboxed code judge: verdicts, and each isolation property and limit, tested by attack.

Every limit is small (wall clock 2-3 s, 256 MB, 32 processes) so that a broken sandbox cannot
take the machine down; the fork bomb runs only after a first run shows its limits in place.
"""

import os
import socket
import subprocess
import threading
import uuid

import numpy as np
import pytest

from jaxalign.reward import code_judge
from jaxalign.reward.code_judge import (NOBODY, CodeJudge, SandboxUnavailable, extract_code,
                                        run_sandboxed)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMITS = dict(timeout_s=2.0, cpu_s=2, memory_mb=256, nproc=32, max_output=4096, disk_mb=8)


@pytest.fixture
def sandboxed():
    problem = code_judge.isolation_problem()
    if problem is not None:
        pytest.skip(f"no namespace sandbox here: {problem}")


def survivors(marker: str) -> str:
    """Processes (any uid, any namespace) whose command line holds `marker`."""
    return subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout


def test_isolation_and_limits_are_in_place_before_the_program_runs(sandboxed, monkeypatch):
    monkeypatch.setenv("JAXALIGN_TEST_SECRET", "hunter2")
    program = f"""
import os, resource
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
assert os.getuid() == os.geteuid() == {NOBODY}, os.getuid()
assert status["CapEff"].strip() == "0" * 16 and status["NoNewPrivs"].strip() == "1", status
assert os.getpid() != 1 and os.getppid() == 1  # the namespace's init is our parent
assert sorted(os.listdir("/proc"))[0] == "1" and len([p for p in os.listdir("/proc")
                                                      if p.isdigit()]) == 2  # init and us
for name, limit in [("NPROC", 32), ("AS", 256 << 20), ("FSIZE", 8 << 20), ("CORE", 0)]:
    assert resource.getrlimit(getattr(resource, "RLIMIT_" + name)) == (limit, limit), name
assert resource.getrlimit(resource.RLIMIT_CPU) == (2, 3)
assert set(os.environ) <= {{"PATH", "HOME", "TMPDIR", "LANG"}}, dict(os.environ)
assert os.environ["HOME"] == os.environ["TMPDIR"] == os.getcwd()
assert sorted(os.listdir("/proc/self/fd"))[:3] == ["0", "1", "2"]
assert len(os.listdir("/proc/self/fd")) == 4  # 0, 1, 2 and listdir's own
assert os.readlink("/proc/self/fd/0") == "/dev/null"
with open("scratch.txt", "w") as f:  # the temp dir is writable
    f.write("x" * 1000)
assert open("scratch.txt").read() == "x" * 1000 and open("extra.py").read() == "X = 1"
print("ok")
"""
    res = run_sandboxed(program, files={"extra.py": "X = 1"}, **LIMITS)
    assert res.passed and res.isolated, res.stderr
    assert res.stdout == "ok\n" and not res.truncated
    assert res.workdir.startswith("/tmp/") and not os.path.exists(res.workdir)


@pytest.mark.parametrize("where", ["tmp", "repository", "dev_shm", "proc_sys"])
def test_writes_outside_the_temp_dir_fail(sandboxed, where):
    name = f"jaxalign-escape-{uuid.uuid4().hex}"
    path = {"tmp": f"/tmp/{name}", "repository": os.path.join(REPO, name),
            "dev_shm": f"/dev/shm/{name}", "proc_sys": "/proc/sys/kernel/hostname"}[where]
    try:
        res = run_sandboxed(f"open({path!r}, 'w').write('escaped')", **LIMITS)
        assert res.exit_code == 1 and not res.timed_out
        assert "Read-only file system" in res.stderr, res.stderr
        assert where == "proc_sys" or not os.path.exists(path)
        assert not os.path.exists(res.workdir)
    finally:
        if where != "proc_sys" and os.path.exists(path):
            os.remove(path)


@pytest.mark.parametrize("family", ["tcp_loopback", "abstract_unix"])
def test_network_connections_do_not_get_out(sandboxed, family):
    if family == "tcp_loopback":
        server = socket.create_server(("127.0.0.1", 0))
        address, kind, error = server.getsockname(), "AF_INET", "Network is unreachable"
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(address := f"\0jaxalign-test-{uuid.uuid4().hex}")
        server.listen()
        kind, error = "AF_UNIX", "Connection refused"
    with server:
        server.settimeout(0.2)
        program = (f"import socket\ns = socket.socket(socket.{kind})\ns.settimeout(1)\n"
                   f"s.connect({address!r})\nprint('connected')")
        res = run_sandboxed(program, **LIMITS)
        assert res.exit_code == 1 and "connected" not in res.stdout
        assert error in res.stderr, res.stderr
        with pytest.raises(TimeoutError):
            server.accept()


@pytest.mark.parametrize("program, cpu_s, expect", [
    pytest.param("while True:\n    pass", 1, "SIGXCPU", id="cpu_loop"),
    pytest.param("import time\ntime.sleep(1000)", 2, "timeout", id="sleep_forever"),
    pytest.param("x = []\nwhile True:\n    x.append(bytearray(1 << 24))", 2, "MemoryError",
                 id="memory_hog"),
    pytest.param("open('big', 'wb').write(b'x' * (64 << 20))", 2, "disk", id="disk_fill"),
])
def test_runaway_programs_fail_within_their_limits(sandboxed, program, cpu_s, expect):
    limits = {**LIMITS, "cpu_s": cpu_s, "timeout_s": 3.0 if expect == "SIGXCPU" else 2.0}
    res = run_sandboxed(program, **limits)
    assert not res.passed
    assert res.wall_s < limits["timeout_s"] + 0.5
    if expect == "SIGXCPU":  # 1 CPU second, before the wall clock even on a busy machine
        assert res.killed_by == "SIGXCPU" and not res.timed_out and res.exit_code is None
    elif expect == "timeout":
        assert res.timed_out and res.killed_by == "SIGKILL" and res.exit_code is None
    elif expect == "MemoryError":
        assert res.exit_code == 1 and "MemoryError" in res.stderr and not res.timed_out
    else:  # 64 MB into an 8 MB tmpfs with an 8 MB file-size limit
        assert res.exit_code == 1 and "No space left on device" in res.stderr, res.stderr
    assert not os.path.exists(res.workdir)


def test_fork_bomb_is_contained(sandboxed):
    marker = f"jaxalign-bomb-{uuid.uuid4().hex}"
    bomb = f"""
import os, sys
told = False
while True:
    try:
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-I", "-S", "main.py", {marker!r}])
    except OSError:
        if not told:
            print("fork failed", flush=True)
            told = True
"""
    # the process limit must be in place before the bomb goes off
    check = run_sandboxed("import resource\nassert resource.getrlimit(resource.RLIMIT_NPROC)"
                          " == (32, 32)", **LIMITS)
    assert check.passed and check.isolated, check.stderr
    out = {}
    runner = threading.Thread(target=lambda: out.update(res=run_sandboxed(bomb, **LIMITS)),
                              daemon=True)
    runner.start()
    runner.join(timeout=15)  # a hard cap of the test's own
    assert not runner.is_alive(), "the fork bomb outlived its limits"
    res = out["res"]
    assert res.timed_out and not res.passed and "fork failed" in res.stdout
    assert survivors(marker) == ""
    assert not os.path.exists(res.workdir)


@pytest.mark.parametrize("main_then", ["exits", "hangs"])
def test_a_detached_daemon_dies_with_the_run(sandboxed, main_then):
    marker = f"jaxalign-daemon-{uuid.uuid4().hex}"
    program = f"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c",
                 "import os, time; open('daemon.pid', 'w').write(str(os.getpid())); "
                 "time.sleep(60)", {marker!r}])
    os._exit(0)
while not os.path.exists("daemon.pid") or not open("daemon.pid").read():
    time.sleep(0.01)
os.kill(int(open("daemon.pid").read()), 0)  # it is running
if {main_then == "hangs"}:
    time.sleep(60)
"""
    res = run_sandboxed(program, **LIMITS)
    assert res.passed == (main_then == "exits") and res.timed_out == (main_then == "hangs")
    assert survivors(marker) == ""
    assert not os.path.exists(res.workdir)


def test_output_is_truncated_to_max_output(sandboxed):
    res = run_sandboxed("import sys\nsys.stdout.write('y' * (8 << 20))\nprint('tail')",
                        **LIMITS)
    assert res.passed and res.truncated
    assert res.stdout == "y" * LIMITS["max_output"] and res.stderr == ""


@pytest.mark.parametrize("text, code", [
    ("```python\na = 1\n```\nthen\n```python\na = 2\n```", "a = 2\n"),
    ("```py\nb = 1\n```\n```\nnot python\n```", "b = 1\n"),
    ("```\nc = 1\n```\ntext\n```text\nc = 2\n```", "c = 2\n"),
    ("no code here, `inline` only", None),
    ("```python\nunclosed = 1\n", None),
], ids=["last_python", "python_over_untagged", "last_fenced", "none", "unclosed"])
def test_extract_code(text, code):
    assert extract_code(text) == code


def fenced(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}\n```\nIt works."


ADD = "def add(a, b):\n    return a + b"
SUB = "def add(a, b):\n    return a - b"
CASES = [  # (id, completion, metadata, passes)
    ("asserts_correct", fenced(ADD), {"tests": "assert add(2, 3) == 5"}, True),
    ("asserts_wrong", fenced(SUB), {"tests": "assert add(2, 3) == 5"}, False),
    ("assert_list", fenced(ADD), {"tests": ["assert add(1, 1) == 2", "assert add(0, 0) == 0"]},
     True),
    ("test_function", fenced(ADD), {"tests": "def test_add():\n    assert add(2, 2) == 4"}, True),
    ("test_function_wrong", fenced(SUB),
     {"tests": "def test_add():\n    assert add(2, 2) == 4"}, False),
    ("humaneval_check", fenced(ADD),
     {"tests": "def check(candidate):\n    assert candidate(1, 2) == 3", "entry_point": "add"},
     True),
    ("check_without_entry_point", fenced(ADD),
     {"tests": "def check(candidate):\n    assert candidate(1, 2) == 3"}, False),
    ("no_code_block", "def add(a, b): return a + b", {"tests": "assert add(2, 3) == 5"}, False),
    ("exits_before_tests", fenced("import sys\nsys.exit(0)"),
     {"tests": "assert add(2, 3) == 5"}, False),
    ("os_exit_0_before_tests", fenced("import os\nos._exit(0)"),
     {"tests": "assert add(2, 3) == 5"}, False),
    ("os_exit_0_in_tests_after_a_failure", fenced(ADD + "\nimport os\nadd = lambda a, b: "
                                                   "os._exit(0)"),
     {"tests": "assert add(2, 3) == 5"}, False),
    ("main_block_skipped", fenced(ADD + "\nif __name__ == '__main__':\n    input()"),
     {"tests": "assert add(2, 3) == 5"}, True),
]


def test_code_judge_verdicts(sandboxed):
    ids, completions, metadata, expected = zip(*CASES)
    judge = CodeJudge(workers=2, **LIMITS)
    out = judge(["prompt"] * len(CASES), list(completions), list(metadata))
    assert out.scores is None
    assert dict(zip(ids, out.passed.tolist())) == dict(zip(ids, expected))
    # the runs, as `run` gives them: the drawn pass status reads as 0, an early exit 0 as 1
    runs = dict(zip(ids, judge.run(list(completions), list(metadata))))
    assert runs["asserts_correct"].exit_code == 0 and runs["asserts_correct"].passed
    early = runs["os_exit_0_before_tests"]
    assert early.exit_code == 1 and "before the tests finished" in early.stderr


def test_parallel_candidates_keep_their_order(sandboxed):
    expected = [True, False, False, True, True, False, True, False]
    tests = "assert add(20, 22) == 42"
    completions = [fenced(ADD if ok else f"def add(a, b):\n    return {i}")
                   for i, ok in enumerate(expected)]
    judge = CodeJudge(workers=2, **LIMITS)
    out = judge(["p"] * 8, completions, [{"tests": tests}] * 8)
    np.testing.assert_array_equal(out.passed, expected)


@pytest.mark.parametrize("meta, error, match", [
    ({"test": "assert True"}, KeyError, r"judge 'code': response 1 has no metadata 'tests'"),
    ({"tests": 3}, TypeError, r"judge 'code': response 1: metadata 'tests' must be Python"),
], ids=["missing_key", "not_source"])
def test_bad_tests_metadata_names_the_response(sandboxed, meta, error, match):
    judge = CodeJudge(**LIMITS)
    with pytest.raises(error, match=match):
        judge(["p", "p"], [fenced(ADD)] * 2, [{"tests": "assert True"}, meta])


def test_refuses_without_isolation_unless_told(monkeypatch):
    monkeypatch.setattr(code_judge, "isolation_problem", lambda: "unshare refused (test)")
    with pytest.raises(SandboxUnavailable, match=r"run_sandboxed refuses .*unshare refused"):
        run_sandboxed("print(1)", **LIMITS)
    with pytest.raises(SandboxUnavailable, match=r"judge 'code' refuses .*unsafe_no_sandbox"):
        CodeJudge(**LIMITS)
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox .*unshare refused"):
        res = run_sandboxed("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS))",
                            unsafe_no_sandbox=True, **LIMITS)
    assert res.passed and not res.isolated and res.stdout == f"({256 << 20}, {256 << 20})\n"
    with pytest.warns(RuntimeWarning, match="judge 'code' runs code WITHOUT a sandbox"):
        judge = CodeJudge(unsafe_no_sandbox=True, **LIMITS)
    out = judge(["p"] * 2, [fenced(ADD), fenced(SUB)], [{"tests": "assert add(2, 3) == 5"}] * 2)
    np.testing.assert_array_equal(out.passed, [True, False])
