"""Fixed-shape numpy batches from records, padded on the right to one of a few bucket lengths.

Batch dicts (B rows, T = a bucket length; masks are aligned with tokens: position t is True
when token t is real / a completion token):

  preference  chosen_tokens int32[B,T], chosen_mask bool[B,T] (prompt + completion),
              chosen_loss_mask bool[B,T] (completion only), the same three rejected_*,
              index int64[B]
  sft         tokens, mask, loss_mask, index
  prompt      tokens, mask, index, id (str[B]: host-side, pop it before jit)

`index` is the record's position in its dataset; a padding row (filling a last partial batch)
has index -1, pad tokens and all masks False. Few distinct T means few compilations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
            pad_id: int) -> dict[str, np.ndarray]:
    """Records (None for a padding row) -> the batch dict of `kind`, T = length."""
    n = len(records)
    index = np.asarray(index, np.int64)
    if kind == "preference":
        chosen, rejected = _rows(n, length, pad_id), _rows(n, length, pad_id)
        for b, r in enumerate(records):
            if r is not None:
                _fill(chosen, b, r["prompt"], r["chosen"])
                _fill(rejected, b, r["prompt"], r["rejected"])
        names = ("tokens", "mask", "loss_mask")
        return {**{f"chosen_{k}": v for k, v in zip(names, chosen)},
                **{f"rejected_{k}": v for k, v in zip(names, rejected)}, "index": index}
    if kind == "sft":
        tokens, mask, loss_mask = out = _rows(n, length, pad_id)
        for b, r in enumerate(records):
            if r is not None:
                _fill(out, b, r["prompt"], r["completion"])
        return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask, "index": index}
    if kind == "prompt":
        tokens, mask, _ = out = _rows(n, length, pad_id)
        empty = np.zeros(0, np.int32)
        for b, r in enumerate(records):
            if r is not None:
                _fill(out, b, r["prompt"], empty)
        ids = np.array(["" if r is None else r["id"] for r in records], dtype=str)
        return {"tokens": tokens, "mask": mask, "index": index, "id": ids}
    raise ValueError(f"unknown kind {kind!r}")
