"""Fixed-shape numpy batches from records, padded on the right to one of a few bucket lengths.

Batch dicts (B rows, T = a bucket length, K = completions per prompt; masks are aligned with
tokens: position t is True when token t is real / a completion token):

  preference  chosen_tokens int32[B,T], chosen_mask bool[B,T] (prompt + completion),
              chosen_loss_mask bool[B,T] (completion only), the same three rejected_*,
              index int64[B]
  sft         tokens, mask, loss_mask, index
  prompt      tokens, mask, index, id (str[B]: host-side, pop it before jit)
  group       tokens int32[B,K,T], mask bool[B,K,T] (prompt + completion k),
              loss_mask bool[B,K,T] (completion k only), index int64[B]: the K completions
              of one prompt (SPPO / CGPO), each row k laid out as an sft row

Scalar columns: a dataset may declare `columns` {name: numpy dtype name}, e.g.
{"reward": "float32", "source": "int32"}; every record carries a value under each name (a
list of K values for group) and the batch gets `name` as dtype[B] ([B,K] for group). A name
may not be a batch key, a record field or "weight", which the train steps add (`RESERVED`).

`index` is the record's position in its dataset; a padding row (filling a last partial batch)
has index -1, pad tokens, all masks False and columns 0. Few distinct T means few compilations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

KINDS = ("preference", "sft", "prompt", "group")
_SEQ = ("tokens", "mask", "loss_mask")
RESERVED = frozenset(
    _SEQ + ("index", "id", "weight", "prompt", "completion", "chosen", "rejected", "completions")
    + tuple(f"{side}_{k}" for side in ("chosen", "rejected") for k in _SEQ))


def check_column_spec(columns: Mapping[str, str]) -> None:
    """ValueError naming the column whose name is reserved or whose dtype is not numeric."""
    for name, dtype in columns.items():
        if name in RESERVED:
            raise ValueError(f"column {name!r} collides with a batch key or record field; "
                             f"rename it (reserved: {sorted(RESERVED)})")
        try:
            kind = np.dtype(dtype).kind
        except TypeError as e:
            raise ValueError(f"column {name!r}: {dtype!r} is not a numpy dtype name") from e
        if kind not in "iuf":
            raise ValueError(f"column {name!r}: dtype must be an integer or float type, "
                             f"got {dtype!r}")


def bucket_lengths(max_length: int, *, min_length: int = 64,
                   multiple: int | None = None) -> tuple[int, ...]:
    """Powers of two from min_length (or the multiples of `multiple`), then max_length itself.

    bucket_lengths(512) == (64, 128, 256, 512); bucket_lengths(300, multiple=128) == (128, 256, 300)
    """
    if multiple is not None:
        out = list(range(multiple, max_length, multiple))
    else:
        out, n = [], min_length
        while n < max_length:
            out.append(n)
            n *= 2
    return tuple(out) + (max_length,)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length."""
    for b in buckets:
        if b >= length:
            return b
    raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {buckets[-1]}")


def _rows(n_rows: int, length: int, pad_id: int):
    return (np.full((n_rows, length), pad_id, np.int32), np.zeros((n_rows, length), bool),
            np.zeros((n_rows, length), bool))


def _fill(out, b: int, prompt: np.ndarray, completion: np.ndarray) -> None:
    tokens, mask, loss_mask = out
    p, n = len(prompt), len(prompt) + len(completion)
    tokens[b, :p], tokens[b, p:n] = prompt, completion
    mask[b, :n] = True
    loss_mask[b, p:n] = True


def collate(kind: str, records: Sequence[dict | None], index: np.ndarray, length: int,
            pad_id: int, columns: Mapping[str, str] | None = None, *,
            group_size: int | None = None) -> dict[str, np.ndarray]:
    """Records (None for a padding row) -> the batch dict of `kind`, T = length.

    columns: {name: dtype} of the scalar columns to take from the records (module docstring).
    group_size: K for kind "group"; default: that of the first record (give it when a host's
      rows may all be padding, so every host's batch has the same shape).
    """
    n = len(records)
    index = np.asarray(index, np.int64)
    columns = dict(columns or {})
    check_column_spec(columns)
    if kind == "preference":
        chosen, rejected = _rows(n, length, pad_id), _rows(n, length, pad_id)
        for b, r in enumerate(records):
            if r is not None:
                _fill(chosen, b, r["prompt"], r["chosen"])
                _fill(rejected, b, r["prompt"], r["rejected"])
        batch = {**{f"chosen_{k}": v for k, v in zip(_SEQ, chosen)},
                 **{f"rejected_{k}": v for k, v in zip(_SEQ, rejected)}}
    elif kind == "sft":
        out = _rows(n, length, pad_id)
        for b, r in enumerate(records):
            if r is not None:
                _fill(out, b, r["prompt"], r["completion"])
        batch = dict(zip(_SEQ, out))
    elif kind == "prompt":
        tokens, mask, _ = out = _rows(n, length, pad_id)
        empty = np.zeros(0, np.int32)
        for b, r in enumerate(records):
            if r is not None:
                _fill(out, b, r["prompt"], empty)
        ids = np.array(["" if r is None else r["id"] for r in records], dtype=str)
        batch = {"tokens": tokens, "mask": mask, "id": ids}
    elif kind == "group":
        if group_size is None:
            group_size = next((len(r["completions"]) for r in records if r is not None), None)
            if group_size is None:
                raise ValueError("a group batch of padding rows only needs group_size")
        tokens, mask, loss_mask = (x.reshape(n, group_size, length)
                                   for x in _rows(n * group_size, length, pad_id))
        for b, r in enumerate(records):
            if r is not None:
                for k, completion in enumerate(r["completions"]):
                    _fill((tokens[b], mask[b], loss_mask[b]), k, r["prompt"], completion)
        batch = {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}
    else:
        raise ValueError(f"unknown kind {kind!r}")
    shape = (n, group_size) if kind == "group" else (n,)
    for name, dtype in columns.items():
        col = batch[name] = np.zeros(shape, dtype)
        for b, r in enumerate(records):
            if r is not None:
                col[b] = r[name]
    batch["index"] = index
    return batch
