"""Class 11, errors from third-party readers name the file they came from.

gzip, Parquet (pyarrow), JSON, tokenizer loading from a path (transformers / tokenizers) and
token records (tfds array_record): each failure is an error naming the file (and the line or
record where known), chained to the reader's own exception.
"""

import glob
import gzip
import json
import os
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxalign.algorithms.runner import load_tokenizer
from jaxalign.data import DataError, open_records, read_examples, toy, write_records
from jaxalign.data.generated import from_token_rows

ROW = {"prompt": "Hello", "chosen": " world", "rejected": " the sea"}
LINES = b"".join(json.dumps(ROW).encode() + b"\n" for _ in range(300))


def _write(name, data):
    def make(d):
        (d / name).write_bytes(data(d) if callable(data) else data)
        return d / name
    return make


def _parquet_bytes(d):
    pq.write_table(pa.Table.from_pylist([ROW] * 50), d / "good.parquet")
    return (d / "good.parquet").read_bytes()


def _rows(make_path):
    """Reading every row of the file(s) `make_path(tmp dir)` makes."""
    def run(d):
        return list(read_examples("preference", make_path(d)))
    return run


def _two_files_second_missing(d):
    (d / "a.jsonl").write_bytes(LINES)
    return [d / "a.jsonl", d / "b.jsonl"]


def _tokenizer(edit):
    """Loading (as the runners do) a copy of the toy tokenizer directory after `edit`."""
    def run(d):
        tok = d / "tok"
        toy.word_tokenizer().save_pretrained(tok)
        edit(tok)
        return load_tokenizer(str(tok))
    return run


def _put(name, data):
    return lambda tok: (tok / name).write_bytes(data)


def _empty_dir(tok):
    shutil.rmtree(tok)
    tok.mkdir()


def _records(edit, split="train"):
    def run(d):
        rows = [{"prompt": [1, 2], "chosen": [3], "rejected": [4]}] * 3
        ds = from_token_rows("preference", rows, pad_id=0, max_length=8)
        path = write_records(d, {"train": ds}, kind="preference", pad_id=0, max_length=8)
        edit(path)
        src = open_records(path, split)
        return [src[i] for i in range(len(src))]
    return run


def _cut_shard(path):
    shard = glob.glob(os.path.join(path, "*array_record*"))[0]
    with open(shard, "rb") as f:
        raw = f.read()
    with open(shard, "wb") as f:
        f.write(raw[:len(raw) // 2])


GZ = gzip.compress(LINES)
# (id, run(tmp dir), error type, message after the tmp dir, chained to the reader's error)
CASES = [
    ("gz_not_gzip", _rows(_write("a.jsonl.gz", LINES)), DataError,
     r"a\.jsonl\.gz: corrupt or truncated gzip data \(BadGzipFile: Not a gzipped file", True),
    ("gz_truncated", _rows(_write("a.jsonl.gz", GZ[:len(GZ) // 2])), DataError,
     r"a\.jsonl\.gz: corrupt or truncated gzip data \(EOFError: Compressed file ended", True),
    ("gz_bad_crc", _rows(_write("a.jsonl.gz", GZ[:-8] + bytes(8))), DataError,
     r"a\.jsonl\.gz:301: corrupt or truncated gzip data after line 300 \(BadGzipFile: CRC",
     True),
    ("parquet_not_parquet", _rows(_write("a.parquet", LINES)), DataError,
     r"a\.parquet: not a Parquet file, or a damaged one \(ArrowInvalid: Parquet magic bytes",
     True),
    ("parquet_truncated", _rows(_write("a.parquet", lambda d: _parquet_bytes(d)[:300])),
     DataError, r"a\.parquet: not a Parquet file, or a damaged one", True),
    ("parquet_empty", _rows(_write("a.parquet", b"")), DataError,
     r"a\.parquet: not a Parquet file, or a damaged one \(ArrowInvalid: Parquet file size is 0",
     True),
    ("jsonl_invalid_line", _rows(_write("a.jsonl", LINES + b'{"prompt": \n')), DataError,
     r"a\.jsonl:301: invalid JSON: Expecting value", False),
    ("json_object_not_rows", _rows(_write("a.json", json.dumps({"data": [ROW]}, indent=1)
                                          .encode())), DataError,
     r"a\.json: holds one JSON object spanning several lines, not rows", False),
    ("json_array_invalid", _rows(_write("a.json", b'[\n{"prompt": "x"},\n{oops}\n]')),
     DataError, r"a\.json:3: a JSON array that is not valid JSON", True),
    ("json_array_of_non_objects", _rows(_write("a.json", json.dumps([ROW, [1, 2]]).encode())),
     DataError, r"a\.json:row 1: expected a JSON object, got list", False),
    ("missing_data_file", _rows(lambda d: d / "nope.jsonl"), FileNotFoundError,
     r"nope\.jsonl: data file not found \(no such file\)", False),
    ("second_file_missing", _rows(_two_files_second_missing), FileNotFoundError,
     r"b\.jsonl: data file not found", False),
    ("directory_as_data_file", _rows(lambda d: (d / "x.jsonl").mkdir() or d / "x.jsonl"),
     FileNotFoundError, r"x\.jsonl: data file not found \(is a directory, not a file\)", False),
    ("tokenizer_dir_missing", lambda d: load_tokenizer(str(d / "no_tok")), FileNotFoundError,
     r"no_tok': no such directory", False),
    ("tokenizer_dir_empty", _tokenizer(_empty_dir), FileNotFoundError,
     r"tok': the directory is empty", True),
    ("tokenizer_json_corrupt", _tokenizer(_put("tokenizer.json", b"{not json")), ValueError,
     r"tok/tokenizer\.json: not valid JSON", True),
    ("tokenizer_json_wrong_shape", _tokenizer(_put("tokenizer.json", b'{"model": 3}')),
     ValueError, r"tok/tokenizer\.json: not a tokenizers file", True),
    ("tokenizer_config_corrupt", _tokenizer(_put("tokenizer_config.json", b"{x")), ValueError,
     r"tok/tokenizer_config\.json: not valid JSON", True),
    ("tokenizer_config_not_object", _tokenizer(_put("tokenizer_config.json", b"[1]")),
     ValueError, r"tok/tokenizer_config\.json: expected a JSON object, got a list", True),
    ("records_missing_dir", lambda d: open_records(d / "nope"), ValueError,
     r"nope: not a records directory written by write_records", True),
    ("records_missing_split", _records(lambda p: None, split="eval"), ValueError,
     r"jaxalign_records/1\.0\.0: no split 'eval' \(it holds \['train'\]\)", False),
    ("records_truncated_shard", _records(_cut_shard), DataError,
     r"jaxalign_records/1\.0\.0:record 0: fields \['chosen', 'prompt', 'rejected'\] could not "
     "be read", False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_reader_errors_name_the_file(tmp_path, case):
    _, run, error, pattern, chained = case
    with pytest.raises(error, match=re.escape(f"{tmp_path}{os.sep}") + pattern) as err:
        run(tmp_path)
    assert (err.value.__cause__ is not None) == chained


def test_json_array_is_read_as_rows(tmp_path):
    """The right thing rather than an error: a .json file holding one array of row objects."""
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([ROW, {**ROW, "rejected": " a tree"}], indent=2))
    examples = list(read_examples("preference", path))
    assert [ex["location"] for ex in examples] == [f"{path}:row 0", f"{path}:row 1"]
    assert examples[1]["rejected"] == " a tree"
