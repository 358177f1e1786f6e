"""CodeJudge: the response's code block run against the prompt's unit tests in a sandbox (CGPO).

    judge = CodeJudge(workers=4)                     # metadata[i]["tests"]: Python source
    out = judge(prompts, completions, metadata)      # out.passed bool [N]: exit 0 within limits
    res = run_sandboxed("print(1)", timeout_s=3)     # SandboxResult; usable alone

The sandbox (Linux). Our machines run the judge as root, and resource limits alone do not hold
root: it ignores RLIMIT_NPROC, may raise hard limits, and `setsid` escapes a process-group kill.
Each run is a bootstrap (`_BOOT`, fed with a JSON spec on stdin to `python -I -S`) that
  1. drops to an unprivileged uid (nobody, 65534) when started as root, so that outside the
     sandbox every permission check is nobody's (an unprivileged judge keeps its own uid);
  2. unshare(2)s new user, mount, PID, network, IPC and UTS namespaces and maps only that uid
     (uid_map "65534 65534 1"): no other uid, root included, exists inside;
  3. forks the namespace's init (PID 1). Init makes every mount read-only (bind-remount, the
     mount's locked nosuid/nodev/noexec kept), mounts a fresh proc for the new PID namespace and
     a size-capped tmpfs on the run's temp dir (the only writable place; the host's copy of the
     dir stays empty and is deleted afterwards), writes the program there and forks it;
  4. the program gets the temp dir as cwd, HOME and TMPDIR, a minimal environment (nothing of
     the judge's is inherited), stdin /dev/null, no other fd, no capabilities (execve as a
     non-zero uid drops those the new user namespace gave; no_new_privs is set) and, set before
     execve, RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE and RLIMIT_CORE
     0. They bind: the uid is not root, and no capability in a child user namespace counts for
     the initial one, so neither the process count nor a hard limit can be exceeded or raised;
  5. the bootstrap waits for init under the wall clock and SIGKILLs it on timeout. When a PID
     namespace's init dies the kernel kills every process in it (setsid, double forks and all),
     and init exits as soon as the program does: nothing the program started outlives the run.
     Bootstrap and init die with their parent (PR_SET_PDEATHSIG), so a killed judge leaves
     nothing behind either. The new network namespace has only a loopback that is down: every
     connect fails. Captured stdout/stderr keep `max_output` bytes each; the rest is drained.
The proc is read-only too, so a nested user namespace the program makes gets no uid map.
RLIMIT_NPROC counts per user namespace: each run has its own budget, runs in parallel included.
Not done: seccomp syscall filtering (the kernel's namespace and uid checks are the boundary);
and CodeJudge's verdict is an exit status drawn at random per run (3..125, read from a file the
runner deletes before the solution runs), so a solution that ends the process early (os._exit(0),
sys.exit: caught) fails; a solution written to find that number in the runner's memory could
still forge a pass: a judge that must resist that needs the tests in a separate process.
The program runs under the first interpreter in `python` (default: this one, then
/usr/bin/python3) that the sandbox uid may execute; ours lives under /root, so here it is
/usr/bin/python3: the program may use the standard library only.

Where the namespaces cannot be made (another OS, a container that forbids them),
`run_sandboxed` and `CodeJudge` refuse with `SandboxUnavailable` saying what is missing, unless
given `unsafe_no_sandbox=True`: then the program runs with the resource limits only (as the
judge's uid, in a new session, killed by process group) and a warning says so.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from jaxalign.reward.judges import Judge, Verdicts

NOBODY = 65534

# The bootstrap (see the module docstring). It imports everything it needs before dropping to
# the sandbox uid: the judge's interpreter may live where that uid cannot read (/root).
_BOOT = r'''
import ctypes, errno, json, os, re, resource, select, signal, sys, time, traceback

spec = json.loads(sys.stdin.read())
STATUS, WORKDIR, ISOLATE = spec["status_fd"], spec["workdir"], spec["isolate"]
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
CLONE_NEW = {"mnt": 0x20000, "uts": 0x4000000, "ipc": 0x8000000, "user": 0x10000000,
             "pid": 0x20000000, "net": 0x40000000}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
LOCKED = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38


def report(**kw):
    os.write(STATUS, (json.dumps(kw) + "\n").encode())


def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def prctl(option, value):
    check(libc.prctl(option, value, 0, 0, 0), f"prctl({option}, {value})")


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    return libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data))


def enter_namespaces():
    uid, gid = spec["uid"], spec["gid"]
    if os.getuid() != uid:  # root: become nobody before anything else
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    prctl(PR_SET_DUMPABLE, 1)  # the uid change cleared it; /proc/self/uid_map needs it
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != spec["judge_pid"]:
        os._exit(1)  # the judge died before PDEATHSIG was armed
    check(libc.unshare(sum(CLONE_NEW.values())), "unshare(user, mnt, pid, net, ipc, uts)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def make_mounts():
    """In init: every mount read-only; fresh proc; a tmpfs on WORKDIR, the only writable place."""
    check(mount(None, "/", None, MS_REC | MS_PRIVATE), "make / private")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        flags |= sum(v for k, v in LOCKED.items() if k in fields[5].split(","))
        if mount(None, target, None, flags) != 0:
            e = ctypes.get_errno()  # unreachable for this uid (under /root): so for the program
            if e not in (errno.EACCES, errno.ENOENT):
                raise OSError(e, f"remount {target} read-only: {os.strerror(e)}")
    check(mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC),
          "mount proc")
    data = f"size={spec['disk_mb']}m,mode=0700,uid={spec['uid']},gid={spec['gid']}"
    check(mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, data), "mount tmpfs")


def run_program():
    """In the program's process: limits, then execve; never returns."""
    try:
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
        os.closerange(3, 1 << 16)
        os.chdir(WORKDIR)
        if ISOLATE:
            prctl(PR_SET_NO_NEW_PRIVS, 1)
        else:
            os.setsid()
        python = next((p for p in spec["pythons"] if os.access(p, os.X_OK)), None)
        if python is None:
            raise FileNotFoundError(f"no interpreter this uid may run among {spec['pythons']}")
        for name, limit in spec["rlimits"].items():
            resource.setrlimit(getattr(resource, name), tuple(limit))
        os.execve(python, [python, "-I", "-S", "main.py"], spec["env"])
    except BaseException:
        os.write(2, f"sandbox: cannot start the program:\n{traceback.format_exc()}".encode())
    os._exit(127)


def wait_status(st):
    if os.WIFEXITED(st):
        return {"exit_code": os.WEXITSTATUS(st)}
    return {"signal": os.WTERMSIG(st)}


def init():
    """PID 1 of the namespaces: mounts, starts the program, reaps; exits when the program does."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1: signals from inside are ignored
    make_mounts()
    write_files()
    prctl(PR_SET_DUMPABLE, 0)  # the program may not read init's fds (the status pipe)
    program = os.fork()
    if program == 0:
        run_program()
    while True:  # orphans are reparented to us: reap them too
        pid, st = os.waitpid(-1, 0)
        if pid == program:
            report(**wait_status(st))
            os._exit(0)  # takes every process left in the namespace with it


def write_files():
    for name, text in spec["files"].items():
        with open(os.path.join(WORKDIR, name), "w") as f:
            f.write(text)


try:
    if ISOLATE:
        enter_namespaces()
    else:
        write_files()
    start = time.monotonic()
    child = os.fork()
    if child == 0:
        try:
            init() if ISOLATE else run_program()
        except BaseException:
            report(setup_error=traceback.format_exc())
        os._exit(1)
    pidfd = os.pidfd_open(child)
    if not select.select([pidfd], [], [], spec["timeout_s"])[0]:
        (os.kill if ISOLATE else os.killpg)(child, signal.SIGKILL)
        report(timed_out=True)
    _, st = os.waitpid(child, 0)
    if not ISOLATE:
        report(**wait_status(st))
        try:
            os.killpg(child, signal.SIGKILL)  # what the program left in its session
        except ProcessLookupError:
            pass
    report(wall_s=time.monotonic() - start)
except BaseException:
    report(setup_error=traceback.format_exc())
    sys.exit(1)
'''


# reads the bootstrap's source, then the spec, from stdin (ps shows this line, not the source)
_LOADER = ("import sys; exec(compile(sys.stdin.read(int(sys.argv[1])), 'jaxalign-sandbox-boot', "
           "'exec'))")
assert _BOOT.isascii()  # the loader counts characters


class SandboxUnavailable(RuntimeError):
    """Namespace isolation cannot be set up here; the message says what is missing."""


class SandboxError(RuntimeError):
    """The sandbox failed to set itself up for a run (not the program's fault)."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """One sandboxed run. `passed`: exited 0 within its limits."""
    exit_code: int | None  # None when a signal ended the program, or it was killed on timeout
    timed_out: bool  # the wall clock ran out (the whole namespace was killed)
    killed_by: str | None  # the signal that ended the program: SIGXCPU/SIGKILL at RLIMIT_CPU...
    stdout: str  # the first max_output bytes, decoded (invalid UTF-8 replaced)
    stderr: str
    truncated: bool  # stdout or stderr was longer than max_output
    wall_s: float  # from the program's fork to its end (interpreter start-up included)
    workdir: str  # the run's temp dir on the host, deleted before this is returned
    isolated: bool  # False only for unsafe_no_sandbox runs where isolation was unavailable

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _sandbox_ids() -> tuple[int, int]:
    return (NOBODY, NOBODY) if os.geteuid() == 0 else (os.getuid(), os.getgid())


def _default_pythons() -> list[str]:
    return [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]


@functools.lru_cache(maxsize=None)
def isolation_problem() -> str | None:
    """None if the namespace sandbox works here (probed once, end to end), else what is missing."""
    if not sys.platform.startswith("linux"):
        return f"namespaces need Linux; this is {sys.platform!r}"
    missing = [ns for ns in ("user", "mnt", "pid", "net") if not os.path.exists(
        f"/proc/self/ns/{ns}")]
    if missing:
        return f"the kernel has no {', '.join(missing)} namespaces"
    try:
        res = _run("pass", files={}, timeout_s=10.0, cpu_s=5, memory_mb=256, nproc=16,
                   max_output=4096, disk_mb=1, pythons=_default_pythons(), isolate=True)
    except (OSError, SandboxError) as e:
        return f"the namespace sandbox failed to start: {e}"
    if not res.passed:
        return (f"a trivial program failed in the namespace sandbox (exit {res.exit_code}, "
                f"signal {res.killed_by}): {res.stderr[-2000:]}")
    return None


def run_sandboxed(code: str, *, files: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                  cpu_s: int | None = None, memory_mb: int = 512, nproc: int = 64,
                  max_output: int = 64 * 1024, disk_mb: int = 64,
                  python: Sequence[str] | str | None = None,
                  unsafe_no_sandbox: bool = False) -> SandboxResult:
    """Runs `code` as `python -I -S main.py` in the namespace sandbox (module docstring).

    files: more files written beside main.py (name -> text). timeout_s: wall clock; cpu_s: CPU
    seconds (default: timeout_s rounded up; SIGXCPU, then SIGKILL a second later); memory_mb:
    address space; nproc: processes at once, the sandbox's own two included; disk_mb: the temp
    dir's tmpfs and the largest file; max_output: bytes kept of stdout and of stderr.
    python: interpreter path(s), the first the sandbox uid may execute is used.
    Raises SandboxUnavailable where isolation is unavailable, unless unsafe_no_sandbox.
    """
    isolate = _check_isolation("run_sandboxed", unsafe_no_sandbox)
    return _run(code, files=dict(files or {}), isolate=isolate,
                **_limits(timeout_s, cpu_s, memory_mb, nproc, max_output, disk_mb, python))


def _check_isolation(who: str, unsafe_no_sandbox: bool) -> bool:
    """True if the namespace sandbox works; False (with a warning) only if unsafe_no_sandbox."""
    problem = isolation_problem()
    if problem is None:
        return True
    if not unsafe_no_sandbox:
        raise SandboxUnavailable(f"{who} refuses to run code without a sandbox: {problem}. Pass "
                                 "unsafe_no_sandbox=True to run it with resource limits only")
    warnings.warn(f"{who} runs code WITHOUT a sandbox (resource limits only): {problem}",
                  RuntimeWarning, stacklevel=3)
    return False


def _limits(timeout_s, cpu_s, memory_mb, nproc, max_output, disk_mb, python) -> dict:
    return dict(timeout_s=timeout_s, cpu_s=math.ceil(timeout_s) if cpu_s is None else cpu_s,
                memory_mb=memory_mb, nproc=nproc, max_output=max_output, disk_mb=disk_mb,
                pythons=[python] if isinstance(python, str) else list(
                    python or _default_pythons()))


def _run(code, *, files, timeout_s, cpu_s, memory_mb, nproc, max_output, disk_mb, pythons,
         isolate) -> SandboxResult:
    for name in files:
        if name == "main.py" or os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"files: {name!r} must be a plain file name other than 'main.py' "
                             "(the program itself)")
    uid, gid = _sandbox_ids()
    workdir = tempfile.mkdtemp(prefix="jaxalign-sandbox-")
    status_r, status_w = os.pipe()
    proc = None
    try:
        if isolate:
            os.chown(workdir, uid, gid)  # its mount point must be reachable by the sandbox uid
        mb = 1 << 20
        spec = dict(
            status_fd=status_w, workdir=workdir, isolate=isolate, uid=uid, gid=gid,
            judge_pid=os.getpid(), timeout_s=timeout_s, disk_mb=disk_mb, pythons=pythons,
            files={**files, "main.py": code},
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                 "LANG": "C.UTF-8"},
            rlimits={"RLIMIT_CPU": (cpu_s, cpu_s + 1), "RLIMIT_AS": (memory_mb * mb,) * 2,
                     "RLIMIT_NPROC": (nproc, nproc), "RLIMIT_FSIZE": (disk_mb * mb,) * 2,
                     "RLIMIT_NOFILE": (256, 256), "RLIMIT_CORE": (0, 0)})
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LOADER, str(len(_BOOT))],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(status_w,), cwd="/",
                                env={"PATH": os.defpath})
        os.close(status_w)
        status_w = None
        proc.stdin.write((_BOOT + json.dumps(spec)).encode())
        proc.stdin.close()
        deadline = time.monotonic() + timeout_s + 10
        out, err, status, truncated = _collect(proc, status_r, deadline, max_output)
        try:  # the bootstrap has closed its pipes: let it finish exiting
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0) + 1.0)
        except subprocess.TimeoutExpired:
            pass
    finally:
        killed = proc is not None and proc.poll() is None
        if killed:
            proc.kill()  # init dies with it (PR_SET_PDEATHSIG), and the namespace with init
        if proc is not None:
            proc.wait()
        for fd in (status_r, status_w):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
    events = {}
    for line in status.decode(errors="replace").splitlines():
        events.update(json.loads(line))
    if "setup_error" in events:
        raise SandboxError(f"the sandbox failed to set up the run: {events['setup_error']}")
    if "wall_s" not in events and not killed:
        raise SandboxError(f"the sandbox's bootstrap exited {proc.returncode} without a status; "
                           f"stderr: {err[-2000:].decode(errors='replace')}")
    timed_out = bool(events.get("timed_out")) or killed
    sig = events.get("signal")
    killed_by = signal.Signals(sig).name if sig else ("SIGKILL" if timed_out else None)
    return SandboxResult(events.get("exit_code"), timed_out, killed_by,
                         out.decode(errors="replace"), err.decode(errors="replace"), truncated,
                         float(events.get("wall_s", timeout_s)), workdir, isolate)


def _collect(proc, status_fd, deadline, max_output):
    """Reads stdout, stderr (first max_output bytes each, the rest drained) and the status pipe
    until all close; a second after the status pipe closes (init gone) at the latest."""
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(),
            status_fd: bytearray()}
    truncated = False
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(deadline - time.monotonic()):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    if key.fd == status_fd:
                        deadline = min(deadline, time.monotonic() + 1.0)
                    continue
                buf = bufs[key.fd]
                room = (1 << 20 if key.fd == status_fd else max_output) - len(buf)
                truncated |= len(chunk) > room
                buf += chunk[:max(room, 0)]
    return (bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]),
            bytes(bufs[status_fd]), truncated)


_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = ("python", "py", "python3")


def extract_code(completion: str) -> str | None:
    """The last ```python fenced block (also ```py, ```python3), else the last fenced block;
    None without a closed fenced block."""
    blocks = _FENCE.findall(completion)
    python = [code for tag, code in blocks if tag.lower() in _PYTHON_TAGS]
    return (python or [code for _, code in blocks] or [None])[-1]


# main.py of a judged run: the solution, then the tests in its namespace (the module is named
# "solution": an `if __name__ == "__main__"` demo block does not run), then every test_*
# function tests.py defines, then check(candidate) for HumanEval-style tests. Any exception,
# SystemExit included (a solution calling sys.exit(0) does not pass), exits 1.
_RUNNER = '''\
import os, sys, traceback
ENTRY_POINT = {entry_point!r}
with open("pass_code") as f:  # the exit status that means "passed", drawn per run
    PASS = int(f.read())
os.remove("pass_code")
ns = {{"__name__": "solution"}}
try:
    for path in ("solution.py", "tests.py"):
        with open(path) as f:
            exec(compile(f.read(), path, "exec"), ns)
    mine = {{k: v for k, v in ns.items() if getattr(getattr(v, "__code__", None),
                                                  "co_filename", None) == "tests.py"}}
    for name, fn in mine.items():
        if name.startswith("test_"):
            fn()
    if "check" in mine:
        if ENTRY_POINT is None:
            raise RuntimeError("tests define check(candidate) but the prompt has no entry point")
        mine["check"](ns[ENTRY_POINT])
    sys.stdout.flush()
    sys.stderr.flush()
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
os._exit(PASS)
'''


class CodeJudge(Judge):
    """Pass iff the response's code block passes the prompt's unit tests in the sandbox.

    Code: `extract_code` (the last ```python block, else the last fenced block; none = fail).
    Tests, `metadata[tests_key]`: Python source (a str, or a list of str joined by newlines),
    run after the solution in the same namespace: top-level asserts (MBPP), `test_*` functions
    (a test function body under `def test_...():`; each is called), or HumanEval's
    `check(candidate)`, called with `metadata[entry_point_key]`'s function. Standard library
    only. Pass iff the run ends within its limits with the exit status drawn for it (module
    docstring: an early exit of the solution, os._exit(0) included, fails).
    workers: runs at once (a thread pool of sandboxed subprocesses); `run` gives the
    SandboxResults (None where there was no code block).
    """

    def __init__(self, *, tests_key: str = "tests", entry_point_key: str = "entry_point",
                 workers: int = 2, timeout_s: float = 10.0, cpu_s: int | None = None,
                 memory_mb: int = 512, nproc: int = 64, max_output: int = 16 * 1024,
                 disk_mb: int = 64, python: Sequence[str] | str | None = None,
                 unsafe_no_sandbox: bool = False, name: str = "code"):
        if workers < 1:
            raise ValueError(f"judge {name!r}: workers must be >= 1, got {workers}")
        self.tests_key, self.entry_point_key, self.workers, self.name = (
            tests_key, entry_point_key, workers, name)
        # refuse (or warn) now, not in the middle of training
        self.isolate = _check_isolation(f"judge {name!r}", unsafe_no_sandbox)
        self.limits = _limits(timeout_s, cpu_s, memory_mb, nproc, max_output, disk_mb, python)

    def _tests(self, i: int, meta: Mapping) -> str:
        if self.tests_key not in meta:
            raise KeyError(f"judge {self.name!r}: response {i} has no metadata {self.tests_key!r}")
        tests = meta[self.tests_key]
        if isinstance(tests, (list, tuple)) and all(isinstance(t, str) for t in tests):
            tests = "\n".join(tests)
        if not isinstance(tests, str):
            raise TypeError(f"judge {self.name!r}: response {i}: metadata {self.tests_key!r} "
                            f"must be Python source (str or list of str), got {type(tests)}")
        return tests

    def run(self, completions: Sequence[str],
            metadata: Sequence[Mapping]) -> list[SandboxResult | None]:
        """One sandboxed run per completion, `workers` at a time, in order."""
        return self._run_all(completions, metadata)

    def _run_all(self, completions, metadata) -> list[SandboxResult | None]:
        """The runs, each with the exit status drawn for it read back as 0 (passed), and an
        early exit 0 as 1 (failed: the tests did not finish)."""
        jobs = []
        for i, (text, meta) in enumerate(zip(completions, metadata)):
            tests, code = self._tests(i, meta), extract_code(text)
            runner = _RUNNER.format(entry_point=meta.get(self.entry_point_key))
            pass_code = 3 + secrets.randbelow(123)  # 3..125: not 0, 1 or 2, nor a shell's
            jobs.append(None if code is None else (runner, {
                "solution.py": code, "tests.py": tests, "pass_code": str(pass_code)}, pass_code))
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            futures = [job and pool.submit(_run, job[0], files=job[1], isolate=self.isolate,
                                           **self.limits) for job in jobs]
            return [f and _verdict(f.result(), job[2]) for f, job in zip(futures, jobs)]

    def judge(self, prompts, completions, metadata):
        results = self.run(completions, metadata)
        return Verdicts(np.array([r is not None and r.passed for r in results], bool))


def _verdict(res: SandboxResult, pass_code: int) -> SandboxResult:
    """A CodeJudge run as a plain exit status: the drawn pass code is 0, an exit 0 is 1."""
    if res.exit_code == pass_code:
        return dataclasses.replace(res, exit_code=0)
    if res.exit_code == 0:
        return dataclasses.replace(res, exit_code=1, stderr=res.stderr + (
            "\n[code judge] the program exited with status 0 before the tests finished"))
    return res
