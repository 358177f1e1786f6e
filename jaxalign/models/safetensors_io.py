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

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """Lazy, read-only view of one .safetensors file: `f[name]` is a memory-mapped array."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 2**20:
                raise ValueError(f"{path}: not a safetensors file (header length {n})")
            try:
                header = json.loads(fh.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: not a safetensors file (bad JSON header: {e})") from e
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header = header
        self._offset = 8 + n
        self._mm = None

    def keys(self):
        return self.header.keys()

    def __contains__(self, name):
        return name in self.header

    def shape(self, name) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def __getitem__(self, name) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = info["data_offsets"]
        buf = self._mm[self._offset + start:self._offset + end]
        return buf.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


class CheckpointTensors:
    """All tensors of a Hugging Face checkpoint directory (single file or sharded with index)."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.exists(index):
            with open(index) as fh:
                weight_map = json.load(fh)["weight_map"]
            files = {f: SafetensorsFile(os.path.join(directory, f))
                     for f in sorted(set(weight_map.values()))}
            self._where = {name: files[f] for name, f in weight_map.items()}
        elif os.path.exists(single):
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

    def __getitem__(self, name) -> np.ndarray:
        return self._where[name][name]


def write_safetensors(path: str, tensors: Iterable[tuple[str, tuple, np.dtype,
                                                         Callable[[], np.ndarray]]],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write (name, shape, dtype, produce) entries; each array is produced only when written.

    Written to `path + ".tmp"` and renamed, so a crash never leaves a half-written file.
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
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, shape, dtype, produce in tensors:
            arr = np.ascontiguousarray(produce(), dtype=dtype)
            if arr.shape != tuple(shape):
                raise ValueError(f"{path}: tensor {name!r} produced {arr.shape}, declared {shape}")
            fh.write(arr.tobytes())
    os.replace(tmp, path)
