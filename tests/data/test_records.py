"""Token records through a TFDS array_record dataset, written and read without TensorFlow."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxalign.data import (BatchIterator, Encoder, iter_records, load_dataset, open_records,
                           write_records)
from tests.data.helpers import assistant, make_dataset, user, write_jsonl

ROWS = [{"prompt": "What is two plus two?", "chosen": [user("What is two plus two?"),
                                                       assistant("It is four.")],
         "rejected": [user("What is two plus two?"), assistant("Paris.")]},
        {"prompt": "Hello", "chosen": " world, how are you?", "rejected": " the sea"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: Hello!",
         "rejected": "\n\nHuman: hi\n\nAssistant: No."}]


@pytest.fixture(autouse=True)
def no_tensorflow():
    """TensorFlow must never be loaded by the TFDS paths (it is not installed here either)."""
    assert "tensorflow" not in sys.modules
    yield
    assert "tensorflow" not in sys.modules


def assert_records_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k == "id":
            assert a[k] == b[k]
        else:
            assert a[k].dtype == b[k].dtype == np.int32
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_write_then_read_identical(chat_tokenizer, tmp_path):
    ds, _ = load_dataset("preference", write_jsonl(tmp_path / "p.jsonl", ROWS), chat_tokenizer)
    path = write_records(tmp_path / "tfds", {"train": ds}, kind=ds.kind, pad_id=ds.pad_id,
                         max_length=ds.max_length, name="prefs")
    assert path == os.fspath(tmp_path / "tfds" / "prefs" / "1.0.0")
    assert any(f.startswith("prefs-train.array_record") for f in os.listdir(path))

    src = open_records(path, "train")
    assert (src.kind, src.pad_id, src.max_length) == ("preference", ds.pad_id, 512)
    assert len(src) == len(ds) == 3
    np.testing.assert_array_equal(src.lengths, ds.lengths)
    for i in [2, 0, 1]:  # random access
        assert_records_equal(src[i], ds[i])

    # The plain tfds entry points read the same records.
    raw = tfds.builder_from_directory(path).as_data_source(split="train")
    np.testing.assert_array_equal(raw[1]["chosen"], ds[1]["chosen"])
    by_name = tfds.data_source("prefs", data_dir=tmp_path / "tfds", split="train")
    np.testing.assert_array_equal(by_name[2]["rejected"], ds[2]["rejected"])

    # And the iterator gives the same batches from disk as from memory.
    for a, b in zip(BatchIterator(src, batch_size=2, num_epochs=2),
                    BatchIterator(ds, batch_size=2, num_epochs=2)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert "tensorflow" not in sys.modules


def test_streamed_splits_and_prompt_ids(plain_tokenizer, tmp_path):
    rows = [{"prompt": "Hello", "id": "a"}, {"prompt": "The quick brown fox"},
            {"prompt": "What is two plus two?", "id": 7}]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    enc = Encoder(plain_tokenizer)
    streams = {split: (r for _, r in iter_records("prompt", path, enc, max_prompt_length=64))
               for split in ("train", "test")}  # generators: nothing held in memory
    out = write_records(tmp_path / "tfds", streams, kind="prompt", pad_id=enc.pad_id,
                        max_length=64)
    ds, _ = load_dataset("prompt", path, plain_tokenizer, max_prompt_length=64)
    for split in ("train", "test"):
        src = open_records(out, split)
        assert [src[i]["id"] for i in range(3)] == ["a", "1", "7"]
        for i in range(3):
            assert_records_equal(src[i], ds[i])
        batch = next(BatchIterator(src, batch_size=4, shuffle=False))
        assert list(batch["id"]) == ["a", "1", "7", ""]


def test_synthetic_sft_and_no_overwrite(tmp_path):
    ds = make_dataset(n=50, kind="sft")
    kw = dict(kind="sft", pad_id=0, max_length=ds.max_length, name="sft")
    path = write_records(tmp_path, {"train": ds}, **kw)
    src = open_records(path)
    assert len(src) == 50
    for i in np.random.default_rng(0).permutation(50)[:10]:
        assert_records_equal(src[int(i)], ds[int(i)])
    assert json.load(open(os.path.join(path, "metadata.json")))["kind"] == "sft"
    with pytest.raises(FileExistsError):
        write_records(tmp_path, {"train": ds}, **kw)
