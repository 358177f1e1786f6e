"""Writes a crash cannot tear: committed files (data, then a marker) and atomic replacement.

Committed files: data first, then a marker, so a reader never takes a torn write for a whole one.

    write_committed("iter_001/grow/chunk-00003.jsonl", text)   # the data, then chunk-...jsonl.commit
    if is_committed(path): rows = read_committed(path)

The marker `<path>.commit` holds the data's byte count and sha256; a file counts as written only
when its marker exists, parses and matches the bytes on disk. A process killed at any moment
leaves either a committed file or one that `is_committed` rejects (no marker, a torn marker, or
data that does not match it), and the writer simply writes it again. Nothing is renamed, so the
same protocol holds on object stores (GCS, S3), which have no atomic rename but write each
object whole. Only one process writes a given path (see `jaxalign.algorithms.driver` for who).

A file replaced whole (a config, a safetensors file, a rewritten log) goes through
`write_atomic` (or `atomic_writer` to stream it): a temp file beside it, fsynced, renamed over
the path, then the directory fsynced, so a crash leaves the old file or the new one, never a
torn one. That needs an atomic rename (a local or network filesystem); on an object store
(below) the object is written whole in one write instead.

Every file is opened with `open_for_write`, which refuses a symbolic link at the path (a link
planted in a workdir would redirect the write to any file the run can write).

One run per workdir: `WorkdirLock` (below) holds `<workdir>/.lock` for the run's lifetime.

Workdirs on buckets: a path that is a URL (`gs://bucket/run`, `s3://...`) goes through
`etils.epath.Path` (as Orbax's checkpoints do; gs:// needs `gcsfs` or TensorFlow installed), a
local path through `os` as described above. The helpers below (`absolute`, `join`, `makedirs`,
`exists`, `isdir`, `listdir`, `remove`, `rmtree`, `read_bytes`, `read_text`) take either, so
callers never branch on it. On a URL: the commit protocol is the same (written against these
helpers only: no rename); `write_atomic` writes the object whole in one write (an object store's
single-object write is atomic: readers see the old object or the new one); `open_for_write`
has no append mode (object stores cannot append); links do not exist, so nothing is refused;
`WorkdirLock` locks nothing (see there). `SCHEMES` maps a URL scheme to another path class
(tests register an in-memory store there).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import pwd
import re
import shutil
import socket
import stat
import threading
import time
from io import BytesIO, StringIO
from typing import Any, Callable

MARKER = ".commit"
log = logging.getLogger(__name__)


# ---- where a path lives: this machine (os) or a URL (etils.epath) ----

# URL scheme -> path class (called with the URL; the etils.epath.Path API as used here: open
# "rb"/"wb", exists, is_dir, iterdir, mkdir, unlink, rmtree). Schemes not listed: epath.Path.
SCHEMES: dict[str, Callable[[str], Any]] = {}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str | os.PathLike) -> bool:
    """True for `<scheme>://...` (gs://, s3://, ...): a path not on this machine's filesystem."""
    return _URL.match(os.fspath(path)) is not None


def _remote(path: str | os.PathLike):
    """The path object of a URL: its scheme's class in `SCHEMES`, else `etils.epath.Path`."""
    path = os.fspath(path)
    cls = SCHEMES.get(path.split("://", 1)[0])
    if cls is None:
        from etils import epath
        cls = epath.Path
    return cls(path)


def absolute(path: str | os.PathLike) -> str:
    """`os.path.abspath` of a local path; a URL unchanged (abspath would mangle it)."""
    return os.fspath(path) if is_url(path) else os.path.abspath(path)


def join(path: str | os.PathLike, *parts: str) -> str:
    """`os.path.join` for a local path, `/`-joined for a URL."""
    return (posixpath if is_url(path) else os.path).join(os.fspath(path), *parts)


def makedirs(path: str | os.PathLike) -> None:
    """Creates the directory and its parents (existing ones are fine)."""
    if is_url(path):
        _remote(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def exists(path: str | os.PathLike) -> bool:
    """True when a file or directory (on a URL: an object or a prefix of some) is at `path`."""
    return _remote(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
    """True when `path` is a directory (on a URL: a prefix of some object)."""
    return _remote(path).is_dir() if is_url(path) else os.path.isdir(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """The names in directory `path`, sorted; FileNotFoundError when there is none."""
    if is_url(path):
        return sorted(p.name for p in _remote(path).iterdir())
    return sorted(os.listdir(path))


def remove(path: str | os.PathLike) -> None:
    """Deletes the file (object) at `path`; FileNotFoundError when there is none."""
    _remote(path).unlink() if is_url(path) else os.remove(path)


def rmtree(path: str | os.PathLike) -> None:
    """Deletes the directory `path` and everything under it."""
    if is_url(path):
        _remote(path).rmtree()
    else:
        shutil.rmtree(path)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of the file (object) at `path`."""
    if is_url(path):
        with _remote(path).open("rb") as fh:
            return fh.read()
    with open(path, "rb") as fh:
        return fh.read()


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of the file (object) at `path`."""
    return read_bytes(path).decode()


def _put(path: str, data: bytes) -> None:
    """The object at URL `path` replaced by `data` in one write (whole or not at all)."""
    with _remote(path).open("wb") as fh:
        fh.write(data)


def _open_nofollow(path: str, flags: int) -> int:
    """os.open(path, flags | O_NOFOLLOW | O_CREAT); a link at `path` is a ValueError naming it."""
    try:
        return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            refuse_link(path)
        raise


def refuse_link(path: str | os.PathLike) -> None:
    """A ValueError naming `path` when it is a symbolic link: jaxalign writes no file or
    directory of a workdir through a link (one planted there could point anywhere). A URL has
    no links: nothing to refuse."""
    path = os.fspath(path)
    if not is_url(path) and os.path.islink(path):
        raise ValueError(f"{path} is a symbolic link (to {os.readlink(path)}); jaxalign does not "
                         "write through links inside a workdir. Remove the link (or use "
                         "another workdir) and start again.")


def open_for_write(path: str | os.PathLike, mode: str = "w"):
    """`open(path, mode)` for mode "w", "wb", "a" or "ab", refusing a symbolic link at `path`
    (O_NOFOLLOW: the check and the open are one system call, so no link can slip in between).
    A URL: "w"/"wb" only (the object appears whole when the file is closed; an object store
    cannot append)."""
    if mode not in ("w", "wb", "a", "ab"):
        raise ValueError(f"open_for_write: mode {mode!r}; expected 'w', 'wb', 'a' or 'ab'")
    if is_url(path):
        if mode[0] == "a":
            raise ValueError(f"{os.fspath(path)}: cannot append (mode {mode!r}) to an object "
                             "in a bucket; write the file whole (write_atomic) instead")
        return _remote(path).open(mode)
    flags = os.O_WRONLY | (os.O_APPEND if mode[0] == "a" else os.O_TRUNC)
    return os.fdopen(_open_nofollow(os.fspath(path), flags), mode)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w"):
    """A file (mode "w" or "wb") whose contents replace `path` whole when the block ends: written
    to `<path>.tmp` (opened with `open_for_write`: a planted link is refused), flushed and
    fsynced, renamed over `path`, then the directory fsynced so the rename itself survives a
    crash. An error inside the block removes the temp file and leaves `path` as it was.

    A URL (an object store has no rename, and no rename is emulated by copy + delete): the block
    writes to memory, and the object is written whole, in one write, when the block ends; an
    object store's single-object write is atomic (readers see the old object or the new one).
    An error inside the block writes nothing."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer: mode {mode!r}; expected 'w' or 'wb'")
    path = os.fspath(path)
    if is_url(path):
        buf = StringIO() if mode == "w" else BytesIO()
        yield buf
        data = buf.getvalue()
        _put(path, data.encode() if mode == "w" else data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    fh = open_for_write(tmp, mode)
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> str:
    """Replaces `path` with `data` whole (`atomic_writer`); returns `path`."""
    with atomic_writer(path, "w" if isinstance(data, str) else "wb") as fh:
        fh.write(data)
    return os.fspath(path)


def _fsync_directory(directory: str) -> None:
    """fsync of a directory (its entries: a rename in it); filesystems that cannot are skipped."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:  # e.g. EINVAL on some network filesystems: nothing more to do there
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError,
                     what: str = "a JSON object") -> dict:
    """The JSON object in the file at `path`; invalid JSON or another kind of value is `error`
    naming the file (`what` says what was expected)."""
    try:
        obj = json.loads(read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{os.fspath(path)}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise error(f"{os.fspath(path)}: expected {what}, got a {type(obj).__name__}")
    return obj


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_committed(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` to `path` (flushed and fsynced), then its marker. The steps use the helpers
    above only (no rename), so they hold on a local disk and on an object store alike."""
    path = os.fspath(path)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    makedirs(os.path.dirname(absolute(path)))
    refuse_link(path + MARKER)
    if exists(path + MARKER):  # an old marker must never vouch for new bytes
        remove(path + MARKER)
    for target, payload in ((path, raw), (path + MARKER, json.dumps(
            {"bytes": len(raw), "sha256": _sha256(raw)}).encode())):
        _write_durably(target, payload)


def _write_durably(path: str, data: bytes) -> None:
    """`data` at `path`, on disk when this returns (local: fsynced; a URL: one object write)."""
    if is_url(path):
        _put(path, data)
        return
    with open_for_write(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _committed_bytes(path: str) -> bytes | None:
    """The bytes at `path` when a marker that matches them exists, else None."""
    try:
        marker = json.loads(read_bytes(path + MARKER))
        raw = read_bytes(path)
    except (OSError, ValueError):
        return None
    ok = (isinstance(marker, dict) and marker.get("bytes") == len(raw)
          and marker.get("sha256") == _sha256(raw))
    return raw if ok else None


def is_committed(path: str | os.PathLike) -> bool:
    """True when `path` and a marker that matches its bytes both exist."""
    return _committed_bytes(os.fspath(path)) is not None


def read_committed(path: str | os.PathLike) -> bytes:
    """The bytes of a committed file; FileNotFoundError naming it when it is not committed."""
    raw = _committed_bytes(os.fspath(path))
    if raw is None:
        raise FileNotFoundError(f"{os.fspath(path)}: not committed (missing, partial, or its "
                                f"{MARKER} marker does not match)")
    return raw


def write_json(path: str | os.PathLike, obj) -> None:
    write_committed(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(read_committed(path))


def write_jsonl(path: str | os.PathLike, rows) -> None:
    write_committed(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a committed JSONL file; a malformed line is an error naming file and line."""
    out = []
    for i, line in enumerate(read_committed(path).decode().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{os.fspath(path)}:{i}: not JSON ({e})") from None
    return out


# ---- one run per workdir ----

class WorkdirBusy(RuntimeError):
    """Another process holds the workdir (or left a lock this host cannot check)."""


def check_owner(workdir: str | os.PathLike) -> None:
    """Refuses a workdir that another user could tamper with: a directory (or link) on its path
    that belongs to another user and sits in a world-writable sticky directory such as /tmp
    (that user could plant links in it, or swap it, under the run). PermissionError naming it.
    A URL: nothing to check here (the bucket's permissions decide who can write to it)."""
    if is_url(workdir):
        return
    me, p = os.getuid(), os.path.abspath(workdir)
    while os.path.dirname(p) != p:
        parent = os.path.dirname(p)
        try:
            st, parent_mode = os.lstat(p), os.stat(parent).st_mode
        except FileNotFoundError:
            p = parent
            continue
        shared = parent_mode & stat.S_IWOTH and parent_mode & stat.S_ISVTX
        if shared and st.st_uid not in (me, 0):
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = f"uid {st.st_uid}"
            raise PermissionError(
                f"workdir {workdir}: {p} belongs to user {owner}, not to you, and sits in the "
                f"world-writable directory {parent}; that user could plant links in it or "
                "replace it. Use a workdir of your own (e.g. under your home directory).")
        p = parent


_held: dict[str, list] = {}  # lock file -> [fd, count]: the locks this process holds
_held_mutex = threading.Lock()
_unlocked_schemes: set[str] = set()  # URL schemes whose workdirs were warned about (not locked)


class WorkdirLock:
    """One run per workdir: an exclusive `flock` on `<workdir>/.lock` for the run's lifetime.

        with io.WorkdirLock(workdir):            # or lock = WorkdirLock(d).acquire(); ...release()
            ...

    The file holds {"host", "pid", "started"} of the holder. A second process is refused
    (`WorkdirBusy`) naming them. The kernel drops a flock when its process dies however it
    dies, so a lock left by a dead process on this host is taken over with a warning; one left
    by a process of another host (whose liveness this host cannot check) is refused with how to
    remove it. A clean release empties the file (it is never deleted: deleting a locked file
    lets two processes lock two different files of the same name).

    Re-entrant within a process: the entry point, the iteration driver and its trainers may
    lock the same directory; each acquire is paired with one release. On several hosts (JAX
    processes), process i > 0 locks `.lock.<i>`, so the processes of one run do not refuse each
    other while two runs' process i do. The workdir is checked with `check_owner` first.

    A workdir on a bucket (a URL): object stores have no flock, so nothing is locked (one
    warning per scheme and process says so). Whoever launches the run (tpu_setup/'s scripts)
    must not start two runs on one bucket workdir.
    """

    def __init__(self, workdir: str | os.PathLike, process_index: int = 0):
        self.workdir = absolute(workdir)
        self.path = join(self.workdir, ".lock" if process_index == 0
                         else f".lock.{process_index}")
        self._key = (None if is_url(self.workdir) else
                     os.path.join(os.path.realpath(self.workdir), os.path.basename(self.path)))
        self._holding = False

    def acquire(self) -> "WorkdirLock":
        if self._holding:
            return self
        if self._key is None:  # a bucket: nothing to lock
            scheme = self.workdir.split("://", 1)[0]
            if scheme not in _unlocked_schemes:
                _unlocked_schemes.add(scheme)
                log.warning("%s: a %s:// workdir cannot be locked (object stores have no "
                            "flock); nothing guards it against a second run: start one run "
                            "per workdir", self.workdir, scheme)
            self._holding = True
            return self
        check_owner(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        with _held_mutex:
            if self._key in _held:
                _held[self._key][1] += 1
            else:
                _held[self._key] = [self._lock_file(), 1]
        self._holding = True
        return self

    def release(self) -> None:
        if not self._holding:
            return
        self._holding = False
        if self._key is None:
            return
        with _held_mutex:
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self._key]
                os.ftruncate(entry[0], 0)  # a clean exit leaves no holder to report
                os.close(entry[0])  # and drops the flock

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _lock_file(self) -> int:
        fd = _open_nofollow(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise WorkdirBusy(
                f"workdir {self.workdir} is in use by another run: {holder or 'a process'} "
                f"holds {self.path}. Wait for it to end (or stop it), or use another workdir."
                ) from None
        except OSError as e:  # a filesystem without flock (some network mounts): say so, go on
            log.warning("%s: cannot lock (%s); this filesystem does not guard the workdir "
                        "against a second run", self.path, e.strerror)
        try:
            self._take_over(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                      "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
                                     ).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _take_over(self, fd: int) -> None:
        """The lock is ours; if the file names a holder, that process died without releasing."""
        raw = os.pread(fd, 4096, 0)
        if not raw.strip():
            return
        try:
            old = json.loads(raw)
            host = old["host"]
        except (ValueError, TypeError, KeyError):
            old, host = None, socket.gethostname()
        if host != socket.gethostname():
            raise WorkdirBusy(
                f"{self.path} was left by {_holder(fd)}, which did not release it; this host "
                f"({socket.gethostname()}) cannot tell whether that process still runs. If it "
                f"does not, delete {self.path} and start again.")
        log.warning("%s: taking over the lock of %s, which ended without releasing it",
                        self.path, _holder(fd) if old else "a process (unreadable record)")


def _holder(fd: int) -> str | None:
    """'pid P on host H (started T)' from a lock file's record; None if it has none."""
    try:
        h = json.loads(os.pread(fd, 4096, 0))
        return f"pid {h['pid']} on host {h['host']} (started {h['started']})"
    except (ValueError, TypeError, KeyError):
        return None
