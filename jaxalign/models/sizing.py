"""A config's parameters under a mesh: their count, shardings and per-device bytes (without
allocating anything), and `place_params`, which puts a parameter tree on the mesh."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxalign import sharding as shd
from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import init_cache, param_logical_axes, param_shapes


def param_count(cfg: ModelConfig) -> int:
    """Exact number of parameters (computed with jax.eval_shape)."""
    return sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree.leaves(param_shapes(cfg)))


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=shd.LOGICAL_RULES):
    return shd.tree_shardings(param_logical_axes(cfg), param_shapes(cfg), mesh, rules)


def place_params(params, model_cfg: ModelConfig, mesh: Mesh | None, logical_axes=None):
    """`params` (numpy or jax arrays) on `mesh` with the shardings of the model's logical axes,
    or of `logical_axes` when given (LoRA adapters, a reward model); the first device without a
    mesh. `jaxalign.sharding.place` with a model's logical axes (trainer, runners)."""
    axes = param_logical_axes(model_cfg) if logical_axes is None else logical_axes
    return shd.place(params, axes, mesh)


def param_bytes_per_device(cfg: ModelConfig, mesh: Mesh | None = None,
                           rules=shd.LOGICAL_RULES) -> int:
    """Bytes of parameters the most loaded device holds under `mesh` (all of them without one)."""
    shapes = jax.tree.leaves(param_shapes(cfg))
    if mesh is None:
        return sum(int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize for x in shapes)
    shardings = jax.tree.leaves(param_shardings(cfg, mesh, rules),
                                is_leaf=lambda s: isinstance(s, NamedSharding))
    return sum(shd.shard_bytes(x.shape, x.dtype, s) for x, s in zip(shapes, shardings))


def abstract_mesh(data: int = 1, fsdp: int = 1, model: int = 1) -> jax.sharding.AbstractMesh:
    """A mesh of any size for sizing a TPU slice from a laptop (no devices needed)."""
    from jax.sharding import AxisType
    return jax.sharding.AbstractMesh((data, fsdp, model), shd.MESH_AXES,
                                     axis_types=(AxisType.Auto,) * 3)


def kv_cache_bytes(cfg: ModelConfig, rows: int, slots: int) -> int:
    """Bytes of `init_cache(cfg, rows, slots)` (keys, values in the compute dtype, and the slot
    mask): per row, 2 x layers x KV heads x head dim x slots x itemsize + slots."""
    cache = jax.eval_shape(lambda: init_cache(cfg, 1, slots))
    return rows * sum(int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize
                      for x in jax.tree.leaves(cache) if x.ndim)  # the write index is per cache
