"""Token records on disk as a TFDS dataset in array_record format, read back without TensorFlow.

    path = write_records("/data/tfds", {"train": ds}, kind=ds.kind, pad_id=ds.pad_id,
                         max_length=ds.max_length, name="hh_dpo")
    src = open_records(path, split="train")      # random access, streams from disk
    it = BatchIterator(src, batch_size=64)

Writing uses a real TFDS builder (`tfds.core.GeneratorBasedBuilder`, prepared with
file_format="array_record"); TFDS 4.9 prepares and reads that format with numpy only, so
TensorFlow is never imported. Shuffling is disabled so record i is the i-th written.
Reading is `tfds.builder_from_directory(path).as_data_source(split)`, equally
`tfds.data_source(name, data_dir=...)`. The kind, pad id and max length are kept in the
dataset's metadata.json; the per-record lengths (for bucketing without reading records) in
`<split>.lengths.npy` beside the shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds

from jaxalign.data.errors import DataError
from jaxalign.data.tokenize import record_length

_FIELDS = {"preference": ("prompt", "chosen", "rejected"), "sft": ("prompt", "completion"),
           "prompt": ("prompt",)}


def features(kind: str) -> tfds.features.FeaturesDict:
    """The TFDS features of a record of `kind`: variable-length int32 token ids (+ id text)."""
    if kind not in _FIELDS:
        raise ValueError(f"kind must be one of {tuple(_FIELDS)}, got {kind!r}")
    spec = {k: tfds.features.Tensor(shape=(None,), dtype=np.int32) for k in _FIELDS[kind]}
    if kind == "prompt":
        spec["id"] = tfds.features.Text()
    return tfds.features.FeaturesDict(spec)


class _RecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder made per call (name, version, splits given), as tfds' own AdhocBuilder."""

    # No source file holds this builder's checksums. Without this, tfds looks for them next to
    # the defining module and, for a module inside a package, needs `importlib_resources`.
    code_path = None

    def __init__(self, *, name: str, version: str, kind: str, metadata: dict,
                 splits: Mapping[str, Iterable[dict]], data_dir: str):
        self.name = name
        self.VERSION = tfds.core.Version(version)  # pylint: disable=invalid-name
        self._kind, self._metadata, self._splits = kind, metadata, splits
        self.lengths: dict[str, list[int]] = {}
        super().__init__(data_dir=data_dir)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description="jaxalign token records", features=features(self._kind),
            metadata=tfds.core.MetadataDict(self._metadata), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split, recs) for split, recs in self._splits.items()}

    def _generate_examples(self, split: str, records: Iterable[dict]):
        lengths = self.lengths.setdefault(split, [])
        for i, record in enumerate(records):
            lengths.append(record_length(self._kind, record))
            yield i, {k: record[k] for k in features(self._kind).keys()}


def write_records(data_dir: str | os.PathLike, splits: Mapping[str, Iterable[dict]], *,
                  kind: str, pad_id: int, max_length: int, name: str = "jaxalign_records",
                  version: str = "1.0.0") -> str:
    """Writes the records of each split (any iterable, e.g. a generator: they stream) to
    `<data_dir>/<name>/<version>` and returns that directory."""
    for split, records in splits.items():
        if getattr(records, "kind", kind) != kind:
            raise ValueError(f"split {split!r} holds {records.kind!r} records, not {kind!r}")
        if getattr(records, "columns", None):  # rather than drop them silently
            raise ValueError(f"split {split!r} has columns {sorted(records.columns)}; "
                             "write_records stores token ids only")
    builder = _RecordBuilder(
        name=name, version=version, kind=kind, splits=splits, data_dir=os.fspath(data_dir),
        metadata={"kind": kind, "pad_id": int(pad_id), "max_length": int(max_length)})
    if builder.is_prepared():
        raise FileExistsError(f"{builder.data_dir} already holds a prepared dataset")
    builder.download_and_prepare(file_format="array_record")
    for split, lengths in builder.lengths.items():
        np.save(os.path.join(builder.data_dir, f"{split}.lengths.npy"),
                np.asarray(lengths, np.int64))
    return os.fspath(builder.data_dir)


class RecordSource:
    """Random access to the records of one split, in the interface `BatchIterator` reads.

    Errors name the directory: one tfds cannot read, a missing split or lengths file, and a
    record that does not decode (a truncated or corrupt shard reads back as None fields).
    """

    def __init__(self, path: str | os.PathLike, split: str = "train"):
        self.path = os.fspath(path)
        try:
            builder = tfds.builder_from_directory(self.path)
        except Exception as e:  # tfds raises its own types, protobuf's, OSError
            raise ValueError(f"{self.path}: not a records directory written by write_records "
                             f"({type(e).__name__}: {e})") from e
        meta = builder.info.metadata or {}
        missing = {"kind", "pad_id", "max_length"} - set(meta)
        if missing:
            raise ValueError(f"{path}: not written by write_records (metadata lacks {missing})")
        if split not in builder.info.splits:
            raise ValueError(f"{path}: no split {split!r} (it holds "
                             f"{sorted(builder.info.splits)})")
        self.kind, self.pad_id, self.max_length = meta["kind"], meta["pad_id"], meta["max_length"]
        self.source = builder.as_data_source(split=split)
        lengths = os.path.join(self.path, f"{split}.lengths.npy")
        if not os.path.isfile(lengths):
            raise FileNotFoundError(f"{lengths}: missing (write_records writes the record "
                                    "lengths beside the shards)")
        self.lengths = np.load(lengths, allow_pickle=False)
        if len(self.lengths) != len(self.source):
            raise ValueError(f"{path}: {len(self.lengths)} lengths for {len(self.source)} records")

    def __len__(self) -> int:
        return len(self.source)

    def _decode(self, i: int, record: dict) -> dict:
        bad = sorted(k for k, v in record.items() if v is None)
        if bad:
            raise DataError(f"{self.path}:record {i}", "unreadable_file", f"fields {bad} could "
                            "not be read: a shard is truncated or corrupt")
        if "id" in record:
            record = {**record, "id": record["id"].decode("utf-8")}
        return record

    def __getitem__(self, i: int) -> dict:
        return self._decode(i, self.source[i])

    def __getitems__(self, ids: list[int]) -> list[dict]:
        return [self._decode(i, r) for i, r in zip(ids, self.source.__getitems__(ids))]


def open_records(path: str | os.PathLike, split: str = "train") -> RecordSource:
    """Opens a split written by `write_records` (path: the `<name>/<version>` directory)."""
    return RecordSource(path, split)
