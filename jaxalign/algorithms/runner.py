"""The plumbing every config-driven runner shares: tokenizer, model, data paths, batch weights.

    tokenizer = load_tokenizer(config.tokenizer)            # "toy" or a local directory
    cfg, params = load_model(config.model, config.seed, mesh)   # preset (random) or hf_path
    cfg = resolve_model_config(config.model)                 # the same config, no weights read
    train_path, eval_path = toy_data_paths(config)           # writes the toy set if data.toy
    it = Mapped(BatchIterator(ds, batch_size=16, seed=0), pair_weight)   # resumable

The `model` section: `preset` (a name of `jaxalign.models.presets`, random init, optional
`vocab_size` / `initializer_range`) or `hf_path` (a local Hugging Face checkpoint), plus the
dtype overrides `dtype`, `param_dtype`, `remat`, `scan_layers` (`model_overrides`).
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np

from jaxalign.data import load_dataset, toy
from jaxalign.data.tokenize import load_tokenizer_dir
from jaxalign.distributed import barrier
from jaxalign.models import ModelConfig, init_params
from jaxalign.models.presets import preset
from jaxalign.sharding import check_batch_rows
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, place_params

OVERRIDES = ("dtype", "param_dtype", "remat", "scan_layers", "attention_impl", "logprob_impl")


class Mapped:
    """A resumable iterator with a function applied to each batch (state passes through)."""

    def __init__(self, it, fn):
        self.it, self.fn = it, fn

    def __iter__(self):
        return self

    def __next__(self):
        return self.fn(next(self.it))

    def state(self):
        return self.it.state()

    def restore(self, state):
        self.it.restore(state)


def pair_weight(batch: dict) -> dict:
    """A preference batch with `weight` [B]: 1 for a real row, 0 for a padding row (the
    iterator pads a last partial batch)."""
    return {**batch, "weight": batch["chosen_mask"].any(-1).astype(np.float32)}


def dataset_fingerprint(ds) -> str:
    """A sha256 hex digest of a TokenizedDataset's token ids (every record, in order)."""
    h = hashlib.sha256(f"{ds.kind}:{ds.pad_id}:{len(ds)}".encode())
    for r in ds.records:
        for k in sorted(r):
            v = r[k]
            h.update(k.encode())
            for a in (v if isinstance(v, list) else [v]):
                h.update(np.ascontiguousarray(a).tobytes() if not isinstance(a, str)
                         else a.encode())
    return h.hexdigest()


def load_tokenizer(spec: str):
    """"toy" (`jaxalign.data.toy`'s word tokenizer) or a local tokenizer directory (no remote
    code, nothing downloaded)."""
    if spec == "toy":
        return toy.word_tokenizer()
    return load_tokenizer_dir(spec)


def model_overrides(mc) -> dict:
    """The `model` section's execution overrides present in the config (dtype, remat, scan,
    attention and log-prob implementations)."""
    return {k: mc[k] for k in OVERRIDES if k in mc}


def resolve_model_config(mc) -> ModelConfig:
    """The ModelConfig of the `model` section: the preset's, or `hf_path`'s config.json (no
    weights read)."""
    if mc.get("hf_path"):
        from jaxalign.models.hf_config import config_from_hf, read_hf_config
        return config_from_hf(read_hf_config(mc.hf_path),
                              where=os.path.join(mc.hf_path, "config.json"), **model_overrides(mc))
    cfg = preset(mc.preset, **model_overrides(mc))
    for key in ("vocab_size", "initializer_range"):
        if mc.get(key):
            cfg = cfg.replace(**{key: mc[key]})
    return cfg


def load_policy(config, mesh):
    """(tokenizer, cfg, params on `mesh`) of `config.tokenizer` and `config.model`; a tokenizer
    with more tokens than the model's vocabulary is an error naming both."""
    tokenizer = load_tokenizer(config.tokenizer)
    cfg, params = load_model(config.model, config.seed, mesh)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens but the "
                         f"model's vocab_size is {cfg.vocab_size}")
    return tokenizer, cfg, params


def load_model(mc, seed: int, mesh):
    """(cfg, params placed on `mesh`): `hf_path`'s weights, or a random init of the preset."""
    if mc.get("hf_path"):
        from jaxalign.models.hf import load_hf
        return load_hf(mc.hf_path, mesh=mesh, **model_overrides(mc))
    cfg = resolve_model_config(mc)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(seed))
    return cfg, place_params(params, cfg, mesh)


def load_split(kind: str, path: str, tokenizer, key: str, **kw):
    """`load_dataset(kind, path, ...)` of `config.data.<key>`; an unset path, or a file without
    a usable row, is an error naming the setting and the file."""
    if not path:
        raise ValueError(f"config.data.{key} is not set: give a .jsonl, .json or .parquet file"
                         f" (or data.toy=True for the built-in toy set, where the runner has one)")
    ds, report = load_dataset(kind, path, tokenizer, **kw)
    if not len(ds):
        raise ValueError(f"config.data.{key} = {path}: no usable {kind} rows (an empty file, or "
                         f"every row skipped: {report})")
    return ds


def loop_and_optimizer(config, mesh):
    """(LoopConfig, optimizer) of `config.loop` / `config.optim`, with the batch size checked
    against the mesh: every setting the trainer uses, validated before anything compiles."""
    loop = LoopConfig(workdir=config.workdir, seed=config.seed, **config.loop)
    optimizer, _ = make_optimizer(**config.optim)
    check_batch_rows(config.data.batch_size, mesh, loop.micro_batches, "config.data.batch_size")
    return loop, optimizer


def toy_data_paths(config) -> tuple[str, str]:
    """(train, eval) preference files: `data.train` / `data.eval`, or with `data.toy` the toy
    set written under `workdir/data` (`toy_train` / `toy_eval` pairs)."""
    d = config.data
    if d.get("toy"):
        root = os.path.join(config.workdir, "data")
        paths = os.path.join(root, "train.jsonl"), os.path.join(root, "eval.jsonl")
        if jax.process_index() == 0:  # one writer; the others read it after the barrier
            toy.write_preference_jsonl(paths[0], d.toy_train, 0)
            toy.write_preference_jsonl(paths[1], d.toy_eval, 1)
        barrier("jaxalign_toy_data")
        return paths
    return d.train, d.eval
