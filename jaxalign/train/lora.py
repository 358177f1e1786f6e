"""LoRA (Hu et al. 2021, arXiv 2106.09685) as functions of a plain parameter tree.

    lcfg = LoraConfig(rank=8, alpha=16.0, targets=("q", "k", "v"))   # GenARM's HH-RLHF setting
    adapters = init_lora(params, lcfg, rng)          # {"layers": {"attn": {"q": {"a", "b"}}}}
    objective = lora_objective(objective, params, lcfg)   # trains adapters; params stay frozen
    state = train(..., params=adapters, logical_axes=lora_logical_axes(cfg, adapters))
    save_hf(path, cfg, merge(params, adapters, lcfg))    # export: a plain checkpoint

No model code changes: an adapted kernel `W [..., in, out]` is replaced by
`W + (alpha / rank) a @ b` before the forward pass, `a [..., in, r]`, `b [..., r, out]`.
The leading `...` is empty for a plain kernel and `[L]` for the stacked decoder layers, so each
layer has its own adapter.

Targets. A target names the module that owns a `kernel` by a suffix of its "/"-joined path:
"q" matches `layers/attn/q/kernel` (the module's own name), "attn/q" and "mlp/down" match one
projection, "layers/attn/q" the full path. Embeddings and norms have no kernel and are never
adapted; a target that matches no kernel is a ValueError listing the modules that have one.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxalign import sharding as shd
from jaxalign.models.config import ModelConfig
from jaxalign.models.paths import flatten_paths, key_name, unflatten_paths
from jaxalign.models.transformer import param_logical_axes
from jaxalign.train.memory import MemoryEstimate


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """`rank` r >= 1, `alpha` > 0 (the update is scaled by alpha / r, as in PEFT), `targets`.

    `targets` may also be given as comma-separated strings ("q,k,v", what a command-line
    override of a tuple field produces); they are stored as a tuple of single targets.
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v")

    def __post_init__(self):
        given = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        targets = (t.strip().strip("/") for s in given for t in str(s).split(","))
        object.__setattr__(self, "targets", tuple(t for t in targets if t))
        if not isinstance(self.rank, (int, np.integer)) or self.rank < 1:
            raise ValueError(f"LoraConfig.rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float, np.number)) and math.isfinite(self.alpha)
                and self.alpha > 0):
            raise ValueError(f"LoraConfig.alpha must be a finite number > 0, got {self.alpha!r}")
        if not self.targets:
            raise ValueError("LoraConfig.targets is empty: name at least one module, e.g. 'q'")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _modules(params) -> dict[tuple[str, ...], object]:
    """{module path: kernel} of every module that owns a `kernel`."""
    return {path[:-1]: w for path, w in flatten_paths(params).items() if path[-1] == "kernel"}


def matched_kernels(params, lcfg: LoraConfig) -> dict[tuple[str, ...], object]:
    """{module path: kernel} of the kernels `lcfg.targets` adapt (see the module docstring)."""
    modules = _modules(params)
    out = {}
    for target in lcfg.targets:
        parts = tuple(target.split("/"))
        hits = {m: w for m, w in modules.items() if m[-len(parts):] == parts}
        if not hits:
            names = ", ".join("/".join(m) for m in sorted(modules))
            raise ValueError(f"LoraConfig.targets: {target!r} matches no kernel; modules with a "
                             f"kernel: {names} (a target is a module name such as 'q' or a "
                             f"suffix of a module path such as 'attn/q')")
        out.update(hits)
    for m, w in out.items():
        if len(w.shape) not in (2, 3):
            raise ValueError(f"LoRA adapts 2-D kernels (with a leading stacked-layer axis at "
                             f"most); {'/'.join(m)}/kernel has shape {tuple(w.shape)}")
    return out


def init_lora(params, lcfg: LoraConfig, rng: jax.Array):
    """Adapters for the matched kernels: a nested dict of module paths to {"a", "b"}.

    For `W [..., in, out]`: `a [..., in, r]` ~ U(-1/sqrt(in), 1/sqrt(in)), which is PEFT's
    default (`kaiming_uniform_(a=sqrt(5))` on its [r, in] matrix), and `b [..., r, out]` = 0,
    both in W's dtype, so the merged model equals the base at init. Each kernel's key is
    `fold_in(rng, crc32(module path))`: adding a target leaves the other adapters unchanged.
    `params` may be `jax.ShapeDtypeStruct`s (under `jax.eval_shape`).
    """
    flat = {}
    for m, w in sorted(matched_kernels(params, lcfg).items()):
        key = jax.random.fold_in(rng, zlib.crc32("/".join(m).encode()) & 0x7FFFFFFF)
        *lead, d_in, d_out = w.shape
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(key, (*lead, d_in, lcfg.rank), jnp.float32, -bound, bound)
        flat[(*m, "a")] = a.astype(w.dtype)
        flat[(*m, "b")] = jnp.zeros((*lead, lcfg.rank, d_out), w.dtype)
    return unflatten_paths(flat)


def _adapter_modules(adapters) -> dict[tuple[str, ...], dict]:
    out: dict = {}
    for path, leaf in flatten_paths(adapters).items():
        if path[-1] not in ("a", "b"):
            raise ValueError(f"adapters: leaf {'/'.join(path)} is not an 'a' or 'b' matrix")
        out.setdefault(path[:-1], {})[path[-1]] = leaf
    return out


def merge(params, adapters, lcfg: LoraConfig):
    """`params` with each adapted kernel replaced by `W + (alpha/r) a @ b`; the rest as is.

    The update is computed in float32 (HIGHEST precision: it is only a rank-r product) and
    cast to W's dtype. Pure and jittable; the tree structure is checked on the host.
    """
    modules = _adapter_modules(adapters)
    kernels = _modules(params)
    for m, ab in modules.items():
        w = kernels.get(m)
        if w is None or set(ab) != {"a", "b"}:
            raise ValueError(f"adapters: {'/'.join(m)} has no kernel in params or lacks a/b")
        a, b = ab["a"], ab["b"]
        want_a = (*w.shape[:-1], lcfg.rank)
        want_b = (*w.shape[:-2], lcfg.rank, w.shape[-1])
        if a.shape != want_a or b.shape != want_b:
            raise ValueError(f"adapters: {'/'.join(m)} has a{list(a.shape)} b{list(b.shape)}; "
                             f"kernel {list(w.shape)} at rank {lcfg.rank} needs a{list(want_a)} "
                             f"b{list(want_b)}")

    def merged(path, w):
        m = tuple(key_name(k) for k in path[:-1])
        if key_name(path[-1]) != "kernel" or m not in modules:
            return w
        a, b = modules[m]["a"], modules[m]["b"]  # [..., in, r], [..., r, out]
        delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32),
                           b.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
        return (w.astype(jnp.float32) + lcfg.scale * delta).astype(w.dtype)

    return jax.tree_util.tree_map_with_path(merged, params)


def lora_logical_axes(cfg_or_axes, adapters):
    """Logical axis names for `adapters` (for `train(logical_axes=...)`).

    `cfg_or_axes`: a `ModelConfig` or the logical-axes tree of the base params (e.g. a reward
    model's). `a` takes W's axes with the out axis unsharded, `b` W's with the in axis unsharded.
    """
    axes = (param_logical_axes(cfg_or_axes) if isinstance(cfg_or_axes, ModelConfig)
            else cfg_or_axes)
    flat = flatten_paths(axes, is_leaf=lambda x: isinstance(x, tuple))

    def names(path, _):
        *m, ab = (key_name(k) for k in path)
        w = flat[(*m, "kernel")]
        return (*w[:-1], None) if ab == "a" else (*w[:-2], None, w[-1])

    return jax.tree_util.tree_map_with_path(names, adapters)


def lora_objective(objective, base_params, lcfg: LoraConfig):
    """`objective(params, batch, rng)` turned into one of the adapters.

    The base is closed over and wrapped in `stop_gradient`: it is never an argument of `grad`,
    so it is frozen by construction and only the adapters have gradients and optimizer state.
    Memory: the merge materialises each adapted kernel once per step (and, in the backward
    pass, its gradient [..., in, out] before the contraction with a or b), a copy of the
    adapted kernels only, not of the whole model.
    """
    matched_kernels(base_params, lcfg)  # a target that matches nothing fails here, untraced

    def adapted(adapters, batch, rng):
        params = merge(jax.lax.stop_gradient(base_params), adapters, lcfg)
        return objective(params, batch, rng)

    return adapted


def param_count(adapters) -> int:
    """Number of trainable adapter parameters."""
    return sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree.leaves(adapters))


def _bytes_per_device(tree, axes, mesh) -> int:
    leaves = jax.tree.leaves(tree)
    if mesh is None:
        return sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
                   for x in leaves)
    shardings = jax.tree.leaves(shd.tree_shardings(axes, tree, mesh),
                                is_leaf=lambda s: isinstance(s, NamedSharding))
    return sum(shd.shard_bytes(x.shape, x.dtype, s) for x, s in zip(leaves, shardings))


def memory_estimate(full: MemoryEstimate, *, params, param_axes, adapters, optimizer,
                    mesh=None, accumulate: bool = False) -> MemoryEstimate:
    """A full fine-tune's per-device estimate (`train.memory`) turned into LoRA's.

    params: the frozen base (which is also the reference: no copy), the adapters and the merged
    adapted kernels; gradients: the adapters' (x2 with accumulation) and the adapted kernels'
    (see `lora_objective`); optimizer: the state of the adapters only. `params`, `adapters` may
    be shapes; `param_axes` is the logical-axes tree of `params`.
    """
    adapter_axes = lora_logical_axes(param_axes, adapters)
    adapter_bytes = _bytes_per_device(adapters, adapter_axes, mesh)
    modules = _adapter_modules(adapters)
    kernels = {m: w for m, w in _modules(params).items() if m in modules}
    kernel_axes = flatten_paths(param_axes, is_leaf=lambda x: isinstance(x, tuple))
    kernel_bytes = _bytes_per_device(list(kernels.values()),
                                     [kernel_axes[(*m, "kernel")] for m in kernels], mesh)
    opt = jax.tree.leaves(jax.eval_shape(optimizer.init, adapters))
    opt_total = sum(int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize for x in opt)
    total = _bytes_per_device(adapters, adapter_axes, None)
    return dataclasses.replace(
        full, params=full.params + adapter_bytes + kernel_bytes, reference=0,
        optimizer=int(opt_total * adapter_bytes / max(total, 1)),
        gradients=adapter_bytes * (2 if accumulate else 1) + kernel_bytes)
