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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxalign import sharding as shd
from jaxalign.data import pick_bucket


def place(params, mesh: Mesh | None, logical_axes=None):
    """`params` on `mesh` by `logical_axes` (replicated where None); unchanged without a mesh."""
    return params if mesh is None else shd.place(params, logical_axes, mesh)


class BatchedForward:
    """Calls `fn(params, tokens_BxT int32, mask_BxT bool) -> [B, ...]` over ragged sequences."""

    def __init__(self, fn: Callable, params, *, pad_id: int, buckets: Sequence[int],
                 batch_size: int = 32, mesh: Mesh | None = None, logical_axes=None):
        self.fn = jax.jit(fn)
        self.pad_id = int(pad_id)
        self.buckets = tuple(sorted(buckets))
        self.mesh = mesh
        rows = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch_size = -(-batch_size // rows) * rows  # a multiple of the batch shards
        self.params = place(params, mesh, logical_axes)
        self._rows = None if mesh is None else NamedSharding(mesh, P(("data", "fsdp"), None))

    def _put(self, x: np.ndarray):
        return jax.device_put(x, self._rows) if self._rows is not None else x

    def __call__(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        if not len(seqs):
            raise ValueError("BatchedForward: no sequences given")
        lengths = np.array([len(s) for s in seqs])
        if lengths.min() == 0:
            raise ValueError(f"BatchedForward: sequence {int(np.argmin(lengths))} is empty")
        order = np.argsort(lengths, kind="stable")
        B, pending = self.batch_size, []
        for start in range(0, len(seqs), B):
            idx = order[start:start + B]
            T = pick_bucket(int(lengths[idx].max()), self.buckets)
            tokens = np.full((B, T), self.pad_id, np.int32)
            mask = np.zeros((B, T), bool)
            for row, i in enumerate(idx):
                tokens[row, :lengths[i]] = seqs[i]
                mask[row, :lengths[i]] = True
            pending.append((idx, self.fn(self.params, self._put(tokens), self._put(mask))))
        first = np.asarray(pending[0][1])
        out = np.empty((len(seqs),) + first.shape[1:], first.dtype)
        for idx, res in pending:
            out[idx] = np.asarray(res)[:len(idx)]
        return out
