"""A small safetensors reader and writer on numpy memory maps (bfloat16 included).

The `safetensors` numpy API cannot read bfloat16, which most real checkpoints use; the format is
simple (8-byte header length, JSON header, raw little-endian bytes), so jaxalign reads it
directly: every tensor is a zero-copy memory-mapped view, and only the slices a device needs are
ever read from disk. No pickle is involved anywhere.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from jaxalign import io

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32), "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")  # can hold a float weight


class CheckpointError(ValueError):
    """A damaged or unfitting checkpoint: names the file and the tensor (or field)."""


def _shape_ok(shape) -> bool:
    return isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


def _offsets_ok(offsets) -> bool:
    return (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1])


class SafetensorsFile:
    """Lazy, read-only view of one .safetensors file: `f[name]` is a memory-mapped array.

    The whole header is checked on opening, before any tensor is read: every entry has a dtype,
    a shape and offsets whose byte length is shape x dtype, lies inside the file (a truncated
    file is caught here) and overlaps no other. Unknown dtypes are refused only when read.
    """

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise CheckpointError(f"{path}: truncated or not a safetensors file (header "
                                      f"length {n} runs past the end of the {size}-byte file)")
            if n > 100 * 2**20:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
            try:
                header = json.loads(fh.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(
                    f"{path}: not a safetensors file (bad JSON header: {e})") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: the header is a JSON {type(header).__name__}, "
                                  "not an object {tensor name: {dtype, shape, data_offsets}}")
        self.metadata = header.pop("__metadata__", {}) or {}
        if not isinstance(self.metadata, dict):
            raise CheckpointError(f"{path}: __metadata__ must be an object, got "
                                  f"{type(self.metadata).__name__}")
        self.header = header
        self._offset = 8 + n
        self._mm = None
        self._check(size - self._offset)

    def _check(self, data_bytes: int) -> None:
        spans = []
        for name, info in self.header.items():
            where = f"{self.path}: tensor {name!r}"
            if not isinstance(info, dict):
                raise CheckpointError(f"{where}: header entry must be an object, got "
                                      f"{type(info).__name__}")
            dtype, shape, offsets = (info.get(k) for k in ("dtype", "shape", "data_offsets"))
            if not isinstance(dtype, str):
                raise CheckpointError(f"{where}: 'dtype' must be a string, got {dtype!r}")
            if not _shape_ok(shape):
                raise CheckpointError(f"{where}: 'shape' must be a list of non-negative "
                                      f"integers, got {shape!r}")
            if not _offsets_ok(offsets):
                raise CheckpointError(f"{where}: 'data_offsets' must be [begin, end] with "
                                      f"0 <= begin <= end, got {offsets!r}")
            begin, end = offsets
            if end > data_bytes:
                raise CheckpointError(
                    f"{where}: bytes [{begin}, {end}) run past the end of the data "
                    f"({data_bytes} bytes): the file is truncated")
            if dtype in _DTYPES:
                want = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
                if end - begin != want:
                    raise CheckpointError(
                        f"{where}: {end - begin} bytes stored for shape {tuple(shape)} of "
                        f"{dtype}, which needs {want}: the header is inconsistent")
            if end > begin:
                spans.append((begin, end, name))
        spans.sort()
        for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
            if begin_b < end_a:
                raise CheckpointError(f"{self.path}: the bytes of tensors {a!r} and {b!r} "
                                      "overlap (data_offsets): the header is inconsistent")

    def keys(self):
        return self.header.keys()

    def __contains__(self, name):
        return name in self.header

    def shape(self, name) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name) -> str:
        """The stored dtype's safetensors name ("BF16", "F32", "I64", ...)."""
        return self.header[name]["dtype"]

    def __getitem__(self, name) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype "
                                  f"{info['dtype']}")
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = info["data_offsets"]
        buf = self._mm[self._offset + start:self._offset + end]
        return buf.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def _read_index(path: str) -> dict[str, str]:
    """The weight_map {tensor name: shard file} of a model.safetensors.index.json, checked."""
    index = io.read_json_object(path, CheckpointError, "a JSON object with a 'weight_map'")
    if "weight_map" not in index:
        raise CheckpointError(f"{path}: missing field 'weight_map' "
                              "({tensor name: shard file})")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) for f in weight_map.values()):
        raise CheckpointError(f"{path}: field 'weight_map' must be an object "
                              "{tensor name: shard file name}")
    return weight_map


class CheckpointTensors:
    """All tensors of a Hugging Face checkpoint directory (single file or sharded with index).

    `source` is the file that lists the tensors (the index, or the single model.safetensors).
    """

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.exists(index):
            self.source = index
            weight_map = _read_index(index)
            files = {}
            for name, f in sorted(weight_map.items(), key=lambda kv: kv[1]):
                if f not in files:
                    shard = os.path.join(directory, f)
                    if not os.path.isfile(shard):
                        raise FileNotFoundError(
                            f"{index}: weight_map puts tensor {name!r} in shard {f!r}, but "
                            f"{shard} does not exist")
                    files[f] = SafetensorsFile(shard)
                if name not in files[f]:
                    raise CheckpointError(f"{index}: weight_map puts tensor {name!r} in "
                                          f"{files[f].path}, which does not hold it")
            self._where = {name: files[f] for name, f in weight_map.items()}
        elif os.path.exists(single):
            self.source = single
            f = SafetensorsFile(single)
            self._where = {name: f for name in f.keys()}
        else:
            found = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
            unsafe = [f for f in found if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
            hint = (f" It holds {unsafe}: pickle-based weights are never loaded; convert them to "
                    "safetensors first." if unsafe else "")
            raise FileNotFoundError(
                f"{directory}: no model.safetensors or model.safetensors.index.json.{hint}")

    def names(self) -> set[str]:
        return set(self._where)

    def __contains__(self, name):
        return name in self._where

    def file_of(self, name) -> str:
        return self._where[name].path

    def shape(self, name) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def dtype(self, name) -> str:
        return self._where[name].dtype(name)

    def __getitem__(self, name) -> np.ndarray:
        return self._where[name][name]


def write_safetensors(path: str, tensors: Iterable[tuple[str, tuple, np.dtype,
                                                         Callable[[], np.ndarray]]],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write (name, shape, dtype, produce) entries; each array is produced only when written.

    Written with `io.atomic_writer` (temp file, fsync, rename), so a crash never leaves a
    half-written file.
    """
    tensors = list(tensors)
    header, offset = {}, 0
    for name, shape, dtype, _ in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with io.atomic_writer(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, shape, dtype, produce in tensors:
            arr = np.ascontiguousarray(produce(), dtype=dtype)
            if arr.shape != tuple(shape):
                raise ValueError(f"{path}: tensor {name!r} produced {arr.shape}, declared {shape}")
            fh.write(arr.tobytes())
