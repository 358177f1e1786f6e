"""Datasets built from token ids a sampler generated (ReST, SPPO, CGPO), never re-tokenized.

    rows = [{"prompt": row["prompt_tokens"], "completions": [...K token id lists...],
             "reward": [...K floats...]} for ...]
    ds = from_token_rows("group", rows, pad_id=tok.pad_token_id, max_length=1024,
                         columns={"reward": "float32"}, vocab_size=len(tok),
                         locations=["grow/shard-00001.jsonl:17", ...])
    it = BatchIterator(ds, batch_size=8)    # tokens int32[B,K,T], reward float32[B,K]

Rows (token ids: lists of ints or integer numpy arrays; columns: finite numbers):

  sft         {"prompt", "completion", <column>: value}
  preference  {"prompt", "chosen", "rejected", <column>: value}
  group       {"prompt", "completions": [ids] * K, <column>: [K values]}; one K for all rows

The ids are kept as given: no BOS or EOS is added and nothing is truncated (a row longer than
max_length is an error: drop it or raise max_length). Records are int32 arrays, as tokenize.py
makes them, so the same ids give the same batches as `load_dataset`'s. Every row is checked
before the dataset is built; a bad one raises DataError naming its location ("row i" unless
`locations` are given).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from jaxalign.data.batching import check_column_spec
from jaxalign.data.dataset import TokenizedDataset, check_group_size
from jaxalign.data.errors import DataError
from jaxalign.data.tokenize import record_length

FIELDS = {"sft": ("prompt", "completion"), "preference": ("prompt", "chosen", "rejected"),
          "group": ("prompt", "completions")}
_NO_VOCAB = int(np.iinfo(np.int32).max) + 1  # without vocab_size: ids must still fit int32


def from_token_rows(kind: str, rows: Iterable[Mapping], *, pad_id: int, max_length: int,
                    columns: Mapping[str, str] | None = None, vocab_size: int | None = None,
                    locations: Sequence[str] | None = None) -> TokenizedDataset:
    """Rows of token ids (module docstring) -> a `TokenizedDataset` of `kind`.

    columns: {name: numpy dtype name} every row carries, e.g. {"reward": "float32"}.
    vocab_size: when given, every id must lie in [0, vocab_size).
    locations: where each row came from ("path:line"), for errors and `ds.locations`.
    """
    if kind not in FIELDS:
        raise ValueError(f"kind must be one of {tuple(FIELDS)}, got {kind!r}")
    columns = dict(columns or {})
    check_column_spec(columns)
    rows = list(rows)
    locations = [f"row {i}" for i in range(len(rows))] if locations is None else list(locations)
    if len(locations) != len(rows):
        raise ValueError(f"{len(locations)} locations for {len(rows)} rows")
    records = []
    for row, loc in zip(rows, locations):
        record = _record(kind, row, loc, columns, vocab_size)
        if kind == "group":
            first = records[0] if records else record
            check_group_size(record, loc, len(first["completions"]), locations[0], columns)
        n = record_length(kind, record)
        if n > max_length:
            raise DataError(loc, "too_long", f"{n} tokens (prompt + longest completion) exceed "
                            f"max_length {max_length}; rows of generated ids are never "
                            "truncated: drop the row or raise max_length")
        records.append(record)
    return TokenizedDataset(kind=kind, records=records, pad_id=pad_id, max_length=max_length,
                            locations=locations, columns=columns)


def _record(kind: str, row: Mapping, loc: str, columns: dict[str, str],
            vocab_size: int | None) -> dict:
    if not isinstance(row, Mapping):
        raise DataError(loc, "wrong_type", f"a row must be a dict, got {type(row).__name__}")
    for name in FIELDS[kind] + tuple(columns):
        what = "field" if name in FIELDS[kind] else "column"
        if row.get(name) is None:
            raise DataError(loc, "missing_field", f"{what} {name!r} is "
                            f"{'null' if name in row else 'missing'}")
    record = {"prompt": _ids(row["prompt"], loc, "prompt", vocab_size)}
    if not len(record["prompt"]):
        raise DataError(loc, "empty_prompt", "field 'prompt' is empty")
    if kind == "group":
        completions = row["completions"]
        if not isinstance(completions, (list, tuple, np.ndarray)):
            raise DataError(loc, "wrong_type", "field 'completions' must be a list of token id "
                            f"lists, got {type(completions).__name__}")
        if not len(completions):
            raise DataError(loc, "empty_completion", "field 'completions' holds no completions")
        names = [f"completions[{k}]" for k in range(len(completions))]
        record["completions"] = [_completion(c, loc, w, vocab_size)
                                 for c, w in zip(completions, names)]
    else:
        for name in FIELDS[kind][1:]:
            record[name] = _completion(row[name], loc, name, vocab_size)
    if kind == "preference" and np.array_equal(record["chosen"], record["rejected"]):
        raise DataError(loc, "identical_tokens", "chosen and rejected are the same token ids: "
                        "the pair would train with zero gradient")
    k = len(record["completions"]) if kind == "group" else None
    for name, dtype in columns.items():
        record[name] = _column(row[name], loc, name, np.dtype(dtype), k)
    return record


def _ids(value, loc: str, where: str, vocab_size: int | None) -> np.ndarray:
    """int32[T], a copy (as tokenize.py's records), after checking every id."""
    try:
        ids = np.asarray(value)
    except ValueError as e:  # ragged nesting
        raise DataError(loc, "wrong_type", f"field {where!r} must be a flat list of token "
                        f"ids ({e})") from e
    if ids.ndim != 1:
        raise DataError(loc, "wrong_type", f"field {where!r} must be a flat list of token ids, "
                        f"got shape {ids.shape}")
    if not ids.size:
        return np.zeros(0, np.int32)
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(loc, "wrong_type", f"field {where!r} must hold integer token ids, "
                        f"got {ids.dtype}")
    limit = _NO_VOCAB if vocab_size is None else vocab_size
    bad = np.flatnonzero((ids < 0) | (ids >= limit))
    if bad.size:
        pos = int(bad[0])
        if vocab_size is None:
            raise DataError(loc, "out_of_vocab", f"field {where!r} holds token id {ids[pos]} "
                            f"(position {pos}), not a valid int32 token id")
        raise DataError(loc, "out_of_vocab", f"field {where!r} holds token id {ids[pos]} "
                        f"(position {pos}), outside the vocabulary [0, {vocab_size}): the "
                        "records were probably made with another tokenizer (vocabulary)")
    return np.array(ids, np.int32)


def _completion(value, loc: str, where: str, vocab_size: int | None) -> np.ndarray:
    ids = _ids(value, loc, where, vocab_size)
    if not len(ids):
        raise DataError(loc, "empty_completion", f"field {where!r} has an empty completion")
    return ids


def _column(value, loc: str, name: str, dtype: np.dtype, k: int | None):
    """dtype scalar, or dtype[K] for a group row, after checking each value is a finite number
    that the dtype holds exactly enough (an integer column takes integers in its range)."""
    if k is None:
        values = [value]
    elif isinstance(value, (list, tuple, np.ndarray)) and np.ndim(value) == 1:
        values = list(value)
        if len(values) != k:
            raise DataError(loc, "group_size", f"column {name!r} holds {len(values)} values "
                            f"for {k} completions")
    else:
        raise DataError(loc, "wrong_type", f"column {name!r} must be a list of {k} numbers "
                        f"(one per completion), got {type(value).__name__}")
    for x in values:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
            raise DataError(loc, "wrong_type", f"column {name!r} must be a number, got "
                            f"{type(x).__name__} {x!r}")
        if not math.isfinite(x):
            raise DataError(loc, "non_finite", f"column {name!r} is {x}, not a finite number")
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if x != math.floor(x) or not info.min <= x <= info.max:
                raise DataError(loc, "wrong_type", f"column {name!r} is {x}, not an integer "
                                f"that {dtype.name} holds")
    with np.errstate(over="ignore"):
        out = np.asarray(values, dtype)
    if not np.isfinite(out).all():
        raise DataError(loc, "non_finite", f"column {name!r}: {values} overflows {dtype.name}")
    return out if k is not None else out[0]
