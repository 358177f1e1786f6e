"""Run a jitted forward over many token sequences: length buckets, mesh sharding, order kept.

    fwd = BatchedForward(lambda p, t, m: reward_scores(cfg, p, t, m), params, pad_id=0,
                         buckets=bucket_lengths(512), batch_size=32, mesh=mesh,
                         logical_axes=reward_logical_axes(cfg))
    out = fwd(list_of_token_id_lists)      # np.ndarray [N, ...], in the order given

Sequences are sorted by length, cut into batches of `batch_size` rows (the last one filled
with empty rows), and each batch is right-padded to the smallest bucket that holds its
longest row, so the function compiles at most once per bucket. Rows are sharded over the
mesh's (data, fsdp) axes, parameters by their logical axes. Every batch is dispatched before
any result is read back, so host-side padding overlaps device compute.

Several processes (`jax.process_count() > 1`, a mesh over all of them): every process calls it
with its own sequences (e.g. the records it sampled) and gets back its own outputs. Each batch
is `batch_size / process_count` rows of every process, assembled with
`jax.make_array_from_process_local_data`; the number of batches and each batch's bucket are
agreed across processes (the max), so every process runs the same programs on the same shapes
(a process with fewer sequences pads with empty rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxalign import distributed
from jaxalign import sharding as shd
from jaxalign.data import pick_bucket


def place(params, mesh: Mesh | None, logical_axes=None):
    """`params` on `mesh` by `logical_axes` (replicated where None); unchanged without a mesh."""
    return params if mesh is None else shd.place(params, logical_axes, mesh)


class BatchedForward:
    """Calls `fn(params, tokens_BxT int32, mask_BxT bool) -> [B, ...]` over ragged sequences."""

    def __init__(self, fn: Callable, params, *, pad_id: int, buckets: Sequence[int],
                 batch_size: int = 32, mesh: Mesh | None = None, logical_axes=None):
        # outputs keep the batch's row split (each process reads back its own rows)
        self.fn = jax.jit(fn) if mesh is None else jax.jit(
            fn, out_shardings=NamedSharding(mesh, P(("data", "fsdp"))))
        self.pad_id = int(pad_id)
        self.buckets = tuple(sorted(buckets))
        self.mesh = mesh
        rows = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch_size = -(-batch_size // rows) * rows  # a multiple of the batch shards
        self.params = place(params, mesh, logical_axes)
        self._rows = None if mesh is None else NamedSharding(mesh, P(("data", "fsdp"), None))

    def _put(self, x: np.ndarray):
        if self._rows is None:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, self._rows)
        return jax.make_array_from_process_local_data(self._rows, x)

    def __call__(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        several = self.mesh is not None and jax.process_count() > 1
        if not len(seqs) and not several:
            raise ValueError("BatchedForward: no sequences given")
        lengths = np.array([len(s) for s in seqs], np.int64)
        if len(seqs) and lengths.min() == 0:
            raise ValueError(f"BatchedForward: sequence {int(np.argmin(lengths))} is empty")
        order = np.argsort(lengths, kind="stable")
        B = self.batch_size // (jax.process_count() if several else 1)  # this process's rows
        if several and B * jax.process_count() != self.batch_size:
            raise ValueError(f"BatchedForward: batch_size {self.batch_size} does not split over "
                             f"{jax.process_count()} processes")
        starts = range(0, len(seqs), B)
        buckets = [pick_bucket(int(lengths[order[a:a + B]].max()), self.buckets) for a in starts]
        if several:  # every process runs as many batches, each at the largest bucket of its
            count = int(distributed.agree_max([len(buckets)])[0])  # index on any process
            buckets = [int(b) for b in distributed.agree_max(
                buckets + [self.buckets[0]] * (count - len(buckets)))]
        pending = []
        for i, T in enumerate(buckets):
            idx = order[i * B:(i + 1) * B]
            tokens = np.full((B, T), self.pad_id, np.int32)
            mask = np.zeros((B, T), bool)
            for row, j in enumerate(idx):
                tokens[row, :lengths[j]] = seqs[j]
                mask[row, :lengths[j]] = True
            pending.append((idx, self.fn(self.params, self._put(tokens), self._put(mask))))
        out = None
        for idx, res in pending:
            res = distributed.local_rows(res) if several else np.asarray(res)
            if out is None:
                out = np.empty((len(seqs),) + res.shape[1:], res.dtype)
            out[idx] = res[:len(idx)]
        return out
