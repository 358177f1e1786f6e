"""Meshes and logical-axis sharding rules shared by models, training and sampling.

Design: jaxalign uses *auto* mesh axes (GSPMD propagation). Parameters carry logical axis names
(`vocab`, `embed`, `heads`, `kv`, `mlp`, `layers`); `LOGICAL_RULES` maps them onto the mesh axes
`data`, `fsdp`, `model`; `place` puts a tree of them on a mesh (`jaxalign.models.place_params`
for a model's). Inputs are placed with `batch_sharding` and the compiler propagates the
rest, helped by a few activation constraints inside the model. Explicit-axis sharding (the
`jax.make_mesh` default since 0.7) would make every matmul spell out its output sharding; for a
research codebase whose users edit models, auto propagation keeps the model code free of it.
A mesh dimension that does not divide an array dimension is dropped for that array (replicated)
rather than failing, so small KV projections or odd vocabularies still load on any mesh.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

MESH_AXES = ("data", "fsdp", "model")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv", "model"),
    ("mlp", "model"),
    ("layers", None),
    ("length", None),
    ("act_embed", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, model) mesh with auto axis types; `-1` takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = [data, fsdp, model]
    known = math.prod(s for s in shape if s != -1)
    if shape.count(-1) > 1 or len(devices) % known:
        raise ValueError(f"make_mesh: cannot lay {len(devices)} devices out as {shape}")
    shape = [len(devices) // known if s == -1 else s for s in shape]
    if math.prod(shape) != len(devices):
        raise ValueError(f"make_mesh: {shape} needs {math.prod(shape)} devices, have {len(devices)}")
    return jax.make_mesh(
        tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices
    )


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_RULES) -> P:
    """PartitionSpec for an array of `shape` whose dims carry `logical` names.

    Mesh axes that do not divide the dimension, or that an earlier dim already uses, are dropped.
    """
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape):
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = []
        for ax in axes:
            size = mesh.shape[ax]
            if ax in used or size == 1 or dim % (math.prod(mesh.shape[a] for a in kept) * size):
                continue
            kept.append(ax)
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*out)


def tree_shardings(logical_tree, shape_tree, mesh: Mesh | None, rules=LOGICAL_RULES):
    """NamedShardings for a pytree, from a matching pytree of logical-name tuples (every leaf on
    the first device when `mesh` is None)."""
    def sharding(names, x):
        if mesh is None:
            return SingleDeviceSharding(jax.devices()[0])
        return NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules))

    return jax.tree.map(sharding, logical_tree, shape_tree,
                        is_leaf=lambda n: isinstance(n, tuple))


def place(tree, logical_tree, mesh: Mesh | None, rules=LOGICAL_RULES):
    """`tree` (numpy or jax arrays, wherever they are) on `mesh`, each leaf with the sharding its
    logical axis names give (`tree_shardings`); every leaf replicated when `logical_tree` is
    None; on the first device when `mesh` is None. The one way jaxalign puts a parameter tree
    on a mesh (`jaxalign.models.place_params` supplies a model's logical axes)."""
    if logical_tree is None:
        one = SingleDeviceSharding(jax.devices()[0]) if mesh is None else NamedSharding(mesh, P())
        return jax.device_put(tree, one)
    return jax.device_put(tree, tree_shardings(logical_tree, tree, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading axis over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways a batch's rows split: the product of the (data, fsdp) axes."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_rows(rows: int, mesh: Mesh, micro_batches: int = 1, what: str = "a batch") -> None:
    """A row count that does not split into `micro_batches`, then over the data-parallel
    devices, is an error naming both numbers."""
    dp = data_parallel_size(mesh)
    if rows < 1 or rows % (micro_batches * dp):
        within = f" into loop.micro_batches={micro_batches} micro-batches and" * (micro_batches > 1)
        raise ValueError(f"{what} of {rows} rows does not split{within} over the {dp} "
                         f"data-parallel devices of the mesh {dict(mesh.shape)}: use a multiple "
                         f"of {micro_batches * dp}")


def shard_bytes(shape: Sequence[int], dtype, sharding: NamedSharding) -> int:
    """Bytes one device holds of an array with this sharding (ceil for uneven splits)."""
    shard = sharding.shard_shape(tuple(shape))
    return int(np.prod(shard, dtype=np.int64)) * np.dtype(dtype).itemsize
