"""A deterministic, resumable, host-sharded batch iterator over a random-access dataset.

The order of epoch e is `np.random.default_rng([seed, e]).permutation(N)`: a function of
(seed, epoch) only, so `state()` = {"epoch": e, "position": k} (k global batches of epoch e
already produced) is all a checkpoint needs; `restore(state)` continues with exactly the
batches an uninterrupted run would have produced.

Global batch k of an epoch is order[k*B:(k+1)*B]; with process_count hosts, host h gets rows
[h*B/P, (h+1)*B/P) of it, so the hosts' batches partition the global one, which is the same
on every host. The padded length T is the smallest bucket holding the longest row of the
GLOBAL batch (taken from `dataset.lengths`, without reading records), so all hosts agree on
shapes. A last partial batch is filled with padding rows (index -1, masks False) unless
drop_remainder.

The dataset needs: kind, pad_id, max_length, lengths (int[N]), __len__, __getitem__
(`dataset.TokenizedDataset` and `records.RecordSource` both have them); `columns` (scalar
columns to batch) and `group_size` (K of kind "group") are read when it has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxalign.data.batching import bucket_lengths, collate, pick_bucket


class BatchIterator:
    """Yields batch dicts (see batching.py) of batch_size // process_count rows per host."""

    def __init__(self, dataset: Any, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_remainder: bool = False, num_epochs: int | None = None,
                 buckets: Sequence[int] | None = None, process_index: int = 0,
                 process_count: int = 1):
        n = len(dataset)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by process_count "
                             f"{process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if n == 0 or (drop_remainder and n < batch_size):
            raise ValueError(f"dataset of {n} records gives no batch of {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle
        self.drop_remainder, self.num_epochs = drop_remainder, num_epochs
        self.buckets = tuple(buckets or bucket_lengths(dataset.max_length))
        self.lengths = np.asarray(dataset.lengths)
        if max(self.buckets) > dataset.max_length or self.lengths.max() > max(self.buckets):
            raise ValueError(f"buckets {self.buckets} must hold the longest record "
                             f"({self.lengths.max()}) and not exceed max_length "
                             f"{dataset.max_length}")
        self.host_rows = batch_size // process_count
        self.process_index = process_index
        self.batches_per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)
        self._epoch, self._position = 0, 0
        self._order_epoch, self._order = None, None

    # ---- state ----
    def state(self) -> dict[str, int]:
        """JSON-able position: the next batch is batch `position` of epoch `epoch`."""
        return {"epoch": self._epoch, "position": self._position}

    def restore(self, state: dict[str, int]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise ValueError(f"state {state} out of range ({self.batches_per_epoch} batches "
                             "per epoch)")
        self._epoch, self._position = epoch, position

    # ---- order ----
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The record indices of `epoch` in order (cached for the current epoch)."""
        if self._order_epoch != epoch:
            n = len(self.dataset)
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = epoch
        return self._order

    def global_indices(self, epoch: int, position: int) -> np.ndarray:
        """int64[batch_size]: record indices of a global batch, -1 for padding rows."""
        ids = self.epoch_order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        out = np.full(self.batch_size, -1, np.int64)
        out[:len(ids)] = ids
        return out

    # ---- iteration ----
    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_epochs is not None and self._epoch >= self.num_epochs:
            raise StopIteration
        ids = self.global_indices(self._epoch, self._position)
        length = pick_bucket(int(self.lengths[ids[ids >= 0]].max()), self.buckets)
        start = self.process_index * self.host_rows
        mine = ids[start:start + self.host_rows]
        valid = [int(i) for i in mine if i >= 0]
        getitems = getattr(self.dataset, "__getitems__", None)  # one read for a batch
        fetched = iter(getitems(valid) if getitems else [self.dataset[i] for i in valid])
        records = [next(fetched) if i >= 0 else None for i in mine]
        batch = collate(self.dataset.kind, records, mine, length, self.dataset.pad_id,
                        getattr(self.dataset, "columns", {}),
                        group_size=getattr(self.dataset, "group_size", None))
        self._position += 1
        if self._position == self.batches_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
        return batch
