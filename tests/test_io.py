"""Committed files: data then marker; a torn write, a torn marker or changed bytes never count."""

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
