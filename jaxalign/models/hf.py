"""Load Hugging Face checkpoints into jaxalign params, and export params back.

    cfg, params = load_hf("/path/to/Mistral-7B-v0.1", mesh=make_mesh(fsdp=8))  # or Gemma-2...
    save_hf("/tmp/out", cfg, params)           # transformers' from_pretrained loads it

Loading is tensor by tensor: every parameter is built with `jax.make_array_from_callback`
straight onto its sharding, and each device's block is read from memory-mapped safetensors, so
the host never holds a second full copy of the model. Only safetensors are read (never pickle).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import numpy as np
from jax.sharding import Mesh

from jaxalign import distributed, io
from jaxalign import sharding as shd
from jaxalign.models.config import ModelConfig
from jaxalign.models.hf_config import config_from_hf, config_to_hf, read_hf_config
from jaxalign.models.paths import flatten_paths, unflatten_paths
from jaxalign.models.safetensors_io import (FLOAT_DTYPES, CheckpointError, CheckpointTensors,
                                            write_safetensors)
from jaxalign.models.transformer import param_logical_axes, param_shapes


# Buffers some checkpoints carry that are not parameters.
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one of our leaves lives in a HF checkpoint (per layer when `{i}` is in `name`)."""

    name: str
    transpose: bool = False  # torch Linear stores [out, in]; our kernels are [in, out]
    cols: tuple[int, int, int] | None = None  # GPT-2's fused c_attn: our leaf = hf[..., a:b]

    def view(self, arr: np.ndarray) -> np.ndarray:
        if self.cols:
            arr = arr[..., self.cols[0]:self.cols[1]]
        return arr.T if self.transpose else arr

    def hf_shape(self, leaf_shape) -> tuple[int, ...]:
        shape = tuple(reversed(leaf_shape)) if self.transpose else tuple(leaf_shape)
        return shape[:-1] + (self.cols[2],) if self.cols else shape


_NORMS = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
# Gemma-2 (`post_norms`): HF's post_attention_layernorm is the norm AFTER attention.
_SANDWICH_NORMS = {"attn_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
                   "mlp_norm": "pre_feedforward_layernorm",
                   "post_mlp_norm": "post_feedforward_layernorm"}


def _llama_source(path: tuple[str, ...], post_norms: bool = False) -> Source:
    top = {("embed", "embedding"): Source("model.embed_tokens.weight"),
           ("final_norm", "scale"): Source("model.norm.weight"),
           ("lm_head", "kernel"): Source("lm_head.weight", transpose=True)}
    norms = _SANDWICH_NORMS if post_norms else _NORMS
    top.update({("layers", ours, "scale"): Source(f"model.layers.{{i}}.{hf}.weight")
                for ours, hf in norms.items()})
    if path in top:
        return top[path]
    _, block, proj, kind = path
    module = "self_attn" if block == "attn" else "mlp"
    return Source(f"model.layers.{{i}}.{module}.{proj}_proj.{'weight' if kind == 'kernel' else 'bias'}",
                  transpose=kind == "kernel")


def _gpt2_source(path: tuple[str, ...], d: int, prefix: str) -> Source:
    top = {("embed", "embedding"): "wte.weight", ("pos_embed", "embedding"): "wpe.weight",
           ("final_norm", "scale"): "ln_f.weight", ("final_norm", "bias"): "ln_f.bias"}
    if path in top:
        return Source(prefix + top[path])
    kind = "weight" if path[-1] in ("kernel", "scale") else "bias"
    if path[1] in ("attn_norm", "mlp_norm"):
        return Source(f"{prefix}h.{{i}}.ln_{1 if path[1] == 'attn_norm' else 2}.{kind}")
    proj = path[2]
    if proj in ("q", "k", "v"):
        j = "qkv".index(proj)
        return Source(f"{prefix}h.{{i}}.attn.c_attn.{kind}", cols=(j * d, (j + 1) * d, 3 * d))
    module, name = {"o": ("attn", "c_proj"), "up": ("mlp", "c_fc"), "down": ("mlp", "c_proj")}[proj]
    return Source(f"{prefix}h.{{i}}.{module}.{name}.{kind}")  # Conv1D: already [in, out]


def tensor_sources(cfg: ModelConfig, gpt2_prefix: str = "transformer.") -> dict:
    """{our leaf path: Source} for every parameter of `cfg`."""
    paths = flatten_paths(param_shapes(cfg))
    if cfg.is_gpt2:
        return {p: _gpt2_source(p, cfg.hidden_size, gpt2_prefix) for p in paths}
    return {p: _llama_source(p, cfg.post_norms) for p in paths}


def _names(src: Source, stacked: bool, n: int) -> list[str]:
    return [src.name.format(i=i) for i in range(n)] if stacked else [src.name]


def check_tensor(ckpt: CheckpointTensors, name: str, shape: tuple[int, ...], what: str) -> None:
    """CheckpointError naming the file unless tensor `name` is there, of `shape`, stored in a
    float dtype (an integer or bool tensor cannot hold a weight); `what` it is needed for."""
    if name not in ckpt:
        raise CheckpointError(f"{ckpt.source}: tensor {name!r} is missing (needed for {what})")
    got = ckpt.shape(name)
    if got != tuple(shape):
        raise CheckpointError(f"{ckpt.file_of(name)}: tensor {name!r} has shape {got}, "
                              f"expected {tuple(shape)} for {what}")
    if ckpt.dtype(name) not in FLOAT_DTYPES:
        raise CheckpointError(f"{ckpt.file_of(name)}: tensor {name!r} is stored as "
                              f"{ckpt.dtype(name)}, which cannot hold the float parameter "
                              f"{what} (expected one of {', '.join(FLOAT_DTYPES)})")


def load_params(directory: str, cfg: ModelConfig, *, mesh: Mesh | None = None,
                rules=shd.LOGICAL_RULES, strict: bool = True):
    """Params of `cfg` from the safetensors in `directory`, placed on `mesh` (or one device)."""
    ckpt = CheckpointTensors(directory)
    prefix = "" if "wte.weight" in ckpt else "transformer."
    sources = tensor_sources(cfg, prefix)
    shape_tree = param_shapes(cfg)
    shapes = flatten_paths(shape_tree)
    shardings = flatten_paths(shd.tree_shardings(param_logical_axes(cfg), shape_tree, mesh, rules))
    used = set()
    for path, src in sources.items():  # validate everything before reading anything
        stacked = path[0] == "layers"
        want = src.hf_shape(shapes[path].shape[1:] if stacked else shapes[path].shape)
        for name in _names(src, stacked, cfg.num_layers):
            check_tensor(ckpt, name, want, f"{'/'.join(path)} of a {cfg.family} model")
            used.add(name)
    extra = sorted(n for n in ckpt.names() - used if not _IGNORED.search(n)
                   and not (cfg.tie_word_embeddings and n == "lm_head.weight"))
    if strict and extra:
        raise CheckpointError(f"{directory}: {len(extra)} tensors not used by a {cfg.family} model, "
                         f"e.g. {extra[:4]} (a checkpoint of another architecture or head?)")

    def build(path):
        src, leaf, stacked = sources[path], shapes[path], path[0] == "layers"
        names = _names(src, stacked, cfg.num_layers)
        dtype = leaf.dtype

        def read(index):
            if not stacked:
                return np.asarray(src.view(ckpt[names[0]])[index], dtype=dtype)
            layers = range(cfg.num_layers)[index[0]]
            return np.stack([np.asarray(src.view(ckpt[names[i]])[index[1:]], dtype=dtype)
                             for i in layers])

        return jax.make_array_from_callback(leaf.shape, shardings[path], read)

    return unflatten_paths({path: build(path) for path in sources})


def load_hf(directory: str, *, mesh: Mesh | None = None, strict: bool = True, **overrides):
    """(ModelConfig, params) from a HF checkpoint directory.

    `overrides` set execution fields of the config, e.g. `param_dtype="bfloat16"`, `remat="full"`.
    Parameters default to float32 whatever the checkpoint's dtype.
    """
    cfg = config_from_hf(read_hf_config(directory),
                         where=os.path.join(directory, "config.json"), **overrides)
    return cfg, load_params(directory, cfg, mesh=mesh, strict=strict)


def _host(x) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def save_hf(directory: str, cfg: ModelConfig, params, *, dtype: str | None = None,
            max_shard_bytes: int = 5 * 2**30, extra_tensors=(), config_update=None) -> None:
    """Write config.json and safetensors (sharded with an index past `max_shard_bytes`).

    `directory` may be a URL (gs://..., each file written whole). extra_tensors: (hf name,
    shape, produce() -> array) written after the model's (e.g. a reward head), in `dtype`;
    config_update: keys set in config.json. Several processes: all must call it (arrays spread
    over hosts are gathered tensor by tensor, in the same order everywhere); process 0 writes.
    """
    writer = jax.process_index() == 0
    if writer:
        io.makedirs(directory)
    flat = flatten_paths(params)
    dtype = np.dtype(dtype or next(iter(flat.values())).dtype)
    groups: dict[str, list] = {}  # hf name -> [(source, leaf, layer)]
    for path, src in tensor_sources(cfg).items():
        stacked = path[0] == "layers"
        for i, name in enumerate(_names(src, stacked, cfg.num_layers)):
            groups.setdefault(name, []).append((src, flat[path], i if stacked else None))

    def entry(name, parts):
        parts = sorted(parts, key=lambda p: p[0].cols[0] if p[0].cols else 0)
        leaf_shape = parts[0][1].shape[1:] if parts[0][2] is not None else parts[0][1].shape
        shape = parts[0][0].hf_shape(leaf_shape)

        def produce():
            arrs = [_host(leaf[i] if i is not None else leaf) for _, leaf, i in parts]
            arrs = [a.T if s.transpose else a for (s, _, _), a in zip(parts, arrs)]
            return np.concatenate(arrs, axis=-1) if len(arrs) > 1 else arrs[0]

        return name, shape, dtype, produce

    entries = [entry(n, p) for n, p in groups.items()]
    entries += [(name, tuple(shape), dtype, produce) for name, shape, produce in extra_tensors]
    shards, size = [[]], 0
    for e in entries:
        nbytes = int(np.prod(e[1], dtype=np.int64)) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += nbytes

    def write(path, shard):
        if writer:
            write_safetensors(path, shard)
        else:  # the writer's gathers, in its order (each is a collective)
            for e in shard:
                e[3]()

    if len(shards) == 1:
        write(os.path.join(directory, "model.safetensors"), shards[0])
    else:
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write(os.path.join(directory, fname), shard)
            weight_map.update({e[0]: fname for e in shard})
        if writer:
            _write_json(os.path.join(directory, "model.safetensors.index.json"),
                        {"metadata": {}, "weight_map": weight_map})
    if writer:
        _write_json(os.path.join(directory, "config.json"),
                    {**config_to_hf(cfg, str(dtype)), **(config_update or {})})
    distributed.barrier("jaxalign_save_hf")  # the files exist for every process after it


def _write_json(path: str, obj) -> None:
    io.write_atomic(path, json.dumps(obj, indent=2))
