"""Committed files: data first, then a marker, so a reader never takes a torn write for a whole one.

    write_committed("iter_001/grow/chunk-00003.jsonl", text)   # the data, then chunk-...jsonl.commit
    if is_committed(path): rows = read_committed(path)

The marker `<path>.commit` holds the data's byte count and sha256; a file counts as written only
when its marker exists, parses and matches the bytes on disk. A process killed at any moment
leaves either a committed file or one that `is_committed` rejects (no marker, a torn marker, or
data that does not match it), and the writer simply writes it again. Nothing is renamed, so the
same protocol holds on object stores (GCS, S3), which have no atomic rename but write each
object whole. Only one process writes a given path (see `jaxalign.algorithms.driver` for who).
"""

from __future__ import annotations

import hashlib
import json
import os

MARKER = ".commit"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_committed(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` to `path` (flushed and fsynced), then its marker."""
    path = os.fspath(path)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path + MARKER):  # an old marker must never vouch for new bytes
        os.remove(path + MARKER)
    for target, payload in ((path, raw), (path + MARKER, json.dumps(
            {"bytes": len(raw), "sha256": _sha256(raw)}).encode())):
        with open(target, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())


def is_committed(path: str | os.PathLike) -> bool:
    """True when `path` and a marker that matches its bytes both exist."""
    path = os.fspath(path)
    try:
        with open(path + MARKER) as fh:
            marker = json.load(fh)
        with open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("bytes") == len(raw)
            and marker.get("sha256") == _sha256(raw))


def read_committed(path: str | os.PathLike) -> bytes:
    """The bytes of a committed file; FileNotFoundError naming it when it is not committed."""
    if not is_committed(path):
        raise FileNotFoundError(f"{os.fspath(path)}: not committed (missing, partial, or its "
                                f"{MARKER} marker does not match)")
    with open(path, "rb") as fh:
        return fh.read()


def write_json(path: str | os.PathLike, obj) -> None:
    write_committed(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(read_committed(path))


def write_jsonl(path: str | os.PathLike, rows) -> None:
    write_committed(path, "".join(json.dumps(r) + "\n" for r in rows))


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
