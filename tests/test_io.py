"""Committed files (data then marker; a torn write, a torn marker or changed bytes never count)
and atomic replacement (temp file, fsync, rename, fsync of the directory)."""

import json
import os

import pytest

from jaxalign import io


def test_commit_protocol(tmp_path):
    path = tmp_path / "a" / "rows.jsonl"
    assert not io.is_committed(path)
    io.write_jsonl(path, [{"x": 1}, {"x": 2}])
    assert io.is_committed(path) and io.read_jsonl(path) == [{"x": 1}, {"x": 2}]
    marker = json.loads((tmp_path / "a" / "rows.jsonl.commit").read_text())
    assert marker["bytes"] == os.path.getsize(path)

    with open(path, "a") as fh:  # bytes the marker does not vouch for (a torn rewrite)
        fh.write('{"x": 3')
    assert not io.is_committed(path)
    with pytest.raises(FileNotFoundError, match="rows.jsonl: not committed"):
        io.read_committed(path)

    io.write_jsonl(path, [{"x": 4}])  # writing again replaces data and marker
    assert io.read_jsonl(path) == [{"x": 4}]
    (tmp_path / "a" / "rows.jsonl.commit").write_text('{"bytes": 9, "sha')  # a torn marker
    assert not io.is_committed(path)
    os.remove(tmp_path / "a" / "rows.jsonl.commit")  # data without a marker
    assert not io.is_committed(path)


def test_a_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    io.write_committed(path, '{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not JSON"):
        io.read_jsonl(path)


def _raise_midway(path):
    with io.atomic_writer(path, "wb") as fh:
        fh.write(b"half")
        raise RuntimeError("killed midway")


ATOMIC = {  # case: (write, error raised or None, what `path` holds after)
    "text": (lambda p: io.write_atomic(p, "new\n"), None, "new\n"),
    "bytes": (lambda p: io.write_atomic(p, b"\x00new"), None, "\x00new"),
    "error_midway_keeps_old": (_raise_midway, (RuntimeError, "killed midway"), "old"),
    "bad_mode": (lambda p: io.atomic_writer(p, "a").__enter__(), (ValueError, "mode 'a'"), "old"),
}


@pytest.mark.parametrize("write,error,after", ATOMIC.values(), ids=ATOMIC.keys())
def test_write_atomic(tmp_path, monkeypatch, write, error, after):
    path = tmp_path / "sub" / "f.txt"
    path.parent.mkdir()
    path.write_text("old")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    if error:
        with pytest.raises(error[0], match=error[1]):
            write(str(path))
    else:
        assert write(str(path)) == str(path)
        assert synced == [False, True]  # the file, then its directory (the rename)
    assert path.read_bytes() == after.encode("latin-1")
    assert os.listdir(path.parent) == ["f.txt"]  # no temp file left behind


def test_write_atomic_refuses_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "f.txt.tmp")
    with pytest.raises(ValueError, match=r"f\.txt\.tmp is a symbolic link"):
        io.write_atomic(tmp_path / "f.txt", "x")
    assert victim.read_text() == "precious" and not (tmp_path / "f.txt").exists()
