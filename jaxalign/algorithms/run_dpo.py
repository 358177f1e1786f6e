"""DPO end to end from a config: data, model, reference, training loop, export.

Config sections (see experiments/dpo_toy.py for a complete one):
  model:     preset (random init) or hf_path (a local Hugging Face checkpoint); dtype overrides
  tokenizer: "toy" or a local tokenizer directory (never remote code)
  data:      train / eval JSONL or Parquet paths (or toy=True), max_length, max_prompt_length,
             truncation_mode, batch_size, on_error
  loss:      name (a registry name) and kwargs
  reference: "on_the_fly" or "precomputed"
  optim, loop, mesh: see jaxalign.train
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jaxalign.algorithms.dpo import (precompute_reference_logps, preference_objective,
                                     with_reference_logps)
from jaxalign.data import BatchIterator, load_dataset
from jaxalign.data import toy
from jaxalign.models import init_params
from jaxalign.models.hf import load_hf, save_hf
from jaxalign.models.presets import preset
from jaxalign.sharding import make_mesh
from jaxalign.train.memory import estimate_training_memory
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, place_params, train


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


def with_weight(batch: dict) -> dict:
    """1 for a real row, 0 for a padding row (the iterator pads a last partial batch)."""
    return {**batch, "weight": batch["chosen_mask"].any(-1).astype(np.float32)}


def load_tokenizer(spec: str):
    if spec == "toy":
        return toy.word_tokenizer()
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(spec, trust_remote_code=False, local_files_only=True)


def load_model(mc, seed: int, mesh):
    overrides = {k: mc[k] for k in ("dtype", "param_dtype", "remat", "scan_layers") if k in mc}
    if mc.get("hf_path"):
        return load_hf(mc.hf_path, mesh=mesh, **overrides)
    cfg = preset(mc.preset, **overrides)
    if mc.get("vocab_size"):
        cfg = cfg.replace(vocab_size=mc.vocab_size)
    if mc.get("initializer_range"):
        cfg = cfg.replace(initializer_range=mc.initializer_range)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(seed))
    return cfg, place_params(params, cfg, mesh)


def data_paths(config) -> tuple[str, str]:
    d = config.data
    if d.get("toy"):
        root = os.path.join(config.workdir, "data")
        return (toy.write_preference_jsonl(os.path.join(root, "train.jsonl"), d.toy_train, 0),
                toy.write_preference_jsonl(os.path.join(root, "eval.jsonl"), d.toy_eval, 1))
    return d.train, d.eval


def build(config):
    """Everything `train` needs, plus the tokenizer and datasets for evaluation."""
    mesh = make_mesh(**config.mesh)
    tokenizer = load_tokenizer(config.tokenizer)
    cfg, params = load_model(config.model, config.seed, mesh)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens but model "
                         f"vocab_size is {cfg.vocab_size}")
    train_path, eval_path = data_paths(config)
    d = config.data
    kw = dict(max_length=d.max_length, max_prompt_length=d.max_prompt_length,
              truncation_mode=d.truncation_mode, on_error=d.on_error)
    train_ds, _ = load_dataset("preference", train_path, tokenizer, **kw)
    eval_ds, _ = load_dataset("preference", eval_path, tokenizer, **kw)
    ref_params = jax.tree.map(lambda x: x.copy(), params)
    train_it = Mapped(BatchIterator(train_ds, batch_size=d.batch_size, seed=config.seed),
                      with_weight)
    eval_batches = [with_weight(b) for b in BatchIterator(
        eval_ds, batch_size=d.batch_size, shuffle=False, num_epochs=1)]
    objective_ref = ref_params
    if config.reference == "precomputed":
        table_batches = (with_weight(b) for b in BatchIterator(
            train_ds, batch_size=d.batch_size, shuffle=False, num_epochs=1))
        table = precompute_reference_logps(
            cfg, ref_params, table_batches, os.path.join(config.workdir, "ref_logps.npz"))
        train_it = Mapped(train_it, lambda b: with_reference_logps(b, table))
        objective_ref = None
    elif config.reference != "on_the_fly":
        raise ValueError(f"config.reference: expected on_the_fly/precomputed, got "
                         f"{config.reference!r}")
    objective = preference_objective(cfg, loss=config.loss.name,
                                     loss_kwargs=dict(config.loss.kwargs),
                                     ref_params=objective_ref,
                                     lean_logprobs=config.get("lean_logprobs", False))
    return dict(mesh=mesh, tokenizer=tokenizer, cfg=cfg, params=params, ref_params=ref_params,
                train_it=train_it, eval_batches=eval_batches, objective=objective,
                eval_ds=eval_ds)


def run(config):
    """Trains (resuming if the workdir has checkpoints) and returns (model cfg, final state)."""
    b = build(config)
    optimizer, _ = make_optimizer(**config.optim)
    est = estimate_training_memory(
        b["cfg"], optimizer, mesh=b["mesh"], micro_batch=config.data.batch_size //
        config.loop.micro_batches, seq_len=config.data.max_length,
        reference_on_the_fly=config.reference == "on_the_fly",
        lean_logprobs=config.get("lean_logprobs", False),
        accumulate=config.loop.micro_batches > 1)
    print(f"memory per device (estimate):\n{est.table()}", flush=True)
    loop = LoopConfig(workdir=config.workdir, seed=config.seed, **config.loop)
    state = train(loop, objective=b["objective"], optimizer=optimizer, params=b["params"],
                  model_cfg=b["cfg"], train_iter=b["train_it"], eval_batches=b["eval_batches"],
                  mesh=b["mesh"], meta={"config": config.to_json_best_effort()})
    if config.get("export_hf"):
        save_hf(os.path.join(config.workdir, "hf_export"), b["cfg"], state.params)
    return b, state


def loop_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(LoopConfig)} - {"workdir", "seed"}


def dry_run(config) -> dict:
    """Builds the whole train step abstractly (jax.eval_shape) and sizes it on each slice of
    `config.dry_run_meshes`; allocates nothing, so a 7B config validates on a laptop."""
    from jaxalign.models.sizing import abstract_mesh
    from jaxalign.models.transformer import param_shapes
    from jaxalign.train.step import init_state, make_train_step

    mc = config.model
    overrides = {k: mc[k] for k in ("dtype", "param_dtype", "remat", "scan_layers") if k in mc}
    if mc.get("hf_path"):
        from jaxalign.models.hf_config import config_from_hf, read_hf_config
        cfg = config_from_hf(read_hf_config(mc.hf_path), **overrides)
    else:
        cfg = preset(mc.preset, **overrides)
    optimizer, _ = make_optimizer(**config.optim)
    params = param_shapes(cfg)
    state = jax.eval_shape(lambda p: init_state(p, optimizer), params)
    B, T = config.data.batch_size, config.data.max_length
    sds = jax.ShapeDtypeStruct
    batch = {f"{side}_{k}": sds((B, T), dt) for side in ("chosen", "rejected")
             for k, dt in (("tokens", np.int32), ("mask", bool), ("loss_mask", bool))}
    batch["weight"] = sds((B,), np.float32)
    on_the_fly = config.reference == "on_the_fly"
    if not on_the_fly:
        batch.update(ref_chosen_logps=sds((B,), np.float32),
                     ref_rejected_logps=sds((B,), np.float32))

    def step(state, batch, rng, ref):
        objective = preference_objective(cfg, loss=config.loss.name,
                                         loss_kwargs=dict(config.loss.kwargs),
                                         ref_params=ref if on_the_fly else None,
                                         lean_logprobs=config.get("lean_logprobs", False))
        return make_train_step(objective, optimizer, config.loop.micro_batches)(state, batch, rng)

    new_state, metrics = jax.eval_shape(step, state, batch, jax.random.key(0), params)
    if jax.tree.structure(new_state) != jax.tree.structure(state):
        raise AssertionError("train step changes the state's structure")
    report = {"model": cfg, "metrics": sorted(metrics), "estimates": {}}
    for name, m in config.dry_run_meshes.items():
        m = dict(m)
        hbm = m.pop("hbm_gib", None)
        est = estimate_training_memory(
            cfg, optimizer, mesh=abstract_mesh(**m), micro_batch=B // config.loop.micro_batches,
            seq_len=T, reference_on_the_fly=on_the_fly,
            lean_logprobs=config.get("lean_logprobs", False),
            accumulate=config.loop.micro_batches > 1)
        report["estimates"][name] = est
        print(f"{name} {m}:\n{est.table(int(hbm * 2**30) if hbm else None)}", flush=True)
    return report
