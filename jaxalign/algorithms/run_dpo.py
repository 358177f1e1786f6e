"""DPO end to end from a config: data, model, reference, training loop, export.

    python -m jaxalign --config experiments/dpo_toy.py:smoke --workdir /tmp/dpo_toy
    python -m jaxalign --config experiments/dpo_mistral_ultrafeedback.py --dry_run

Config sections (see experiments/dpo_toy.py for a complete one; `algorithm` "dpo" or "arm"):
  model:     preset (random init) or hf_path (a local Hugging Face checkpoint); dtype overrides
  tokenizer: "toy" or a local tokenizer directory (never remote code)
  data:      train / eval JSONL or Parquet paths (or toy=True), max_length, max_prompt_length,
             truncation_mode, batch_size, on_error
  loss:      name (a registry name) and kwargs
  reference: "on_the_fly", "precomputed", or "none" (reference-free losses: genarm.arm,
             dpo.simpo, dpo.orpo, dpo.reference_free; no reference forward pass at all)
  lora:      rank, alpha, targets (jaxalign.train.lora); rank 0 (or no section) is a full
             fine-tune. With LoRA the train state holds only the adapters (small checkpoints
             and optimizer state), the reference is the frozen base itself (no copy) and
             `export_hf` writes the merged weights.
  optim, loop, mesh: see jaxalign.train
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jaxalign import losses
from jaxalign.algorithms.runner import (Mapped, dataset_fingerprint, load_policy, load_split,
                                        loop_and_optimizer, pair_weight, resolve_model_config,
                                        toy_data_paths)
from jaxalign.data import BatchIterator
from jaxalign.distributed import process_rows
from jaxalign.models.hf import save_hf
from jaxalign.models.transformer import param_logical_axes
from jaxalign.objectives import (check_columns, precompute_reference_logps, preference_objective,
                                 with_reference_logps)
from jaxalign.sharding import make_mesh
from jaxalign.train import lora
from jaxalign.train.memory import estimate_training_memory, size_on_meshes
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, train


REFERENCES = ("on_the_fly", "precomputed", "none")


def lora_config(config) -> lora.LoraConfig | None:
    """The `lora` section as a LoraConfig; None (full fine-tune) when absent, None or rank 0."""
    section = config.get("lora")
    if section is None or section.get("rank", 0) == 0:
        return None
    known = {f.name for f in dataclasses.fields(lora.LoraConfig)}
    if set(section.keys()) - known:
        raise ValueError(f"config.lora: unknown keys {sorted(set(section.keys()) - known)}; "
                         f"known: {sorted(known)}")
    return lora.LoraConfig(**{k: tuple(v) if k == "targets" else v for k, v in section.items()})


def check_reference(config) -> None:
    """Host-side check of `config.reference`: "none" only with a loss that needs no reference."""
    if config.reference not in REFERENCES:
        raise ValueError(f"config.reference: expected one of {REFERENCES}, got "
                         f"{config.reference!r}")
    if config.reference != "none":
        return
    z = jax.ShapeDtypeStruct((1,), np.float32)
    try:  # the loss's own required-input check, run on shapes: no hard-coded list of names
        jax.eval_shape(lambda l_w, l_l, n_w, n_l: losses.get_loss(config.loss.name)(
            policy_chosen_logps=l_w, policy_rejected_logps=l_l, chosen_lengths=n_w,
            rejected_lengths=n_l, **dict(config.loss.kwargs)), z, z, z, z)
    except ValueError as e:
        if "ref_" not in str(e):
            raise
        raise ValueError(f"config.reference='none' but loss {config.loss.name!r} needs a "
                         f"reference ({str(e).rstrip('.')}); use on_the_fly/precomputed, or a "
                         f"reference-free loss (genarm.arm, dpo.simpo, dpo.orpo, "
                         f"dpo.reference_free)") from None


def reference_table(config, cfg, ref_params, ds, split: str, mesh=None):
    """The reference log-probs of every row of `ds`, precomputed once into
    `<workdir>/ref_logps_<split>.npz` and reused while the dataset and the reference weights
    are the ones it was computed for (else recomputed)."""
    batches = (pair_weight(b) for b in BatchIterator(
        ds, batch_size=config.data.batch_size, shuffle=False, num_epochs=1, **process_rows()))
    return precompute_reference_logps(
        cfg, ref_params, batches, os.path.join(config.workdir, f"ref_logps_{split}.npz"),
        dataset=dataset_fingerprint(ds), mesh=mesh)


def build(config):
    """Everything `train` needs, plus the tokenizer and datasets for evaluation.

    `train_params` / `logical_axes` are what the trainer optimises: the model's params, or the
    LoRA adapters (`lora` the LoraConfig, else None) with the base `params` frozen.
    """
    check_reference(config)
    lcfg = lora_config(config)
    mesh = make_mesh(**config.mesh)
    loop_and_optimizer(config, mesh)  # every loop / optim / batch setting, checked first
    tokenizer, cfg, params = load_policy(config, mesh)
    train_path, eval_path = toy_data_paths(config)
    d = config.data
    kw = dict(max_length=d.max_length, max_prompt_length=d.max_prompt_length,
              truncation_mode=d.truncation_mode, on_error=d.on_error)
    train_ds = load_split("preference", train_path, tokenizer, "train", **kw)
    eval_ds = load_split("preference", eval_path, tokenizer, "eval", **kw)
    # The trainer donates its state: a full fine-tune's reference must be a copy. With LoRA
    # the state holds only the adapters and the base, never updated, is the reference.
    if config.reference == "none":
        ref_params = None
    else:
        ref_params = params if lcfg else jax.tree.map(lambda x: x.copy(), params)
    # each process reads its own rows of every batch (all of them when it runs alone)
    train_it = Mapped(BatchIterator(train_ds, batch_size=d.batch_size, seed=config.seed,
                                    **process_rows()), pair_weight)
    eval_batches = [pair_weight(b) for b in BatchIterator(
        eval_ds, batch_size=d.batch_size, shuffle=False, num_epochs=1, **process_rows())]
    objective_ref = ref_params if config.reference == "on_the_fly" else None
    if config.reference == "precomputed":
        train_table, eval_table = (reference_table(config, cfg, ref_params, ds, split, mesh)
                                   for ds, split in ((train_ds, "train"), (eval_ds, "eval")))
        train_it = Mapped(train_it, lambda b: with_reference_logps(b, train_table))
        eval_batches = [with_reference_logps(b, eval_table) for b in eval_batches]
    objective = preference_objective(cfg, loss=config.loss.name,
                                     loss_kwargs=dict(config.loss.kwargs),
                                     ref_params=objective_ref,
                                     lean_logprobs=config.get("lean_logprobs", False),
                                     precomputed=config.reference == "precomputed")
    if eval_batches:  # train batches have the same columns
        check_columns(objective, eval_batches[0], f"{eval_path} batches")
    train_params, logical_axes = params, None
    if lcfg:
        objective = lora.lora_objective(objective, params, lcfg)
        train_params = jax.jit(lora.init_lora, static_argnums=1)(
            params, lcfg, jax.random.fold_in(jax.random.key(config.seed), 1))
        logical_axes = lora.lora_logical_axes(cfg, train_params)
        print(f"LoRA {lcfg}: {lora.param_count(train_params):,} trainable parameters",
              flush=True)
    return dict(mesh=mesh, tokenizer=tokenizer, cfg=cfg, params=params, ref_params=ref_params,
                train_it=train_it, eval_batches=eval_batches, objective=objective,
                eval_ds=eval_ds, lora=lcfg, train_params=train_params, logical_axes=logical_axes)


def policy_params(built: dict, state):
    """The trained policy's full params: the state's, or the base with the adapters merged."""
    if built["lora"] is None:
        return state.params
    return jax.jit(lora.merge, static_argnums=2)(built["params"], state.params, built["lora"])


def memory_estimate(config, cfg, optimizer, mesh, *, params=None, adapters=None):
    """Per-device estimate of a full fine-tune, or with `adapters` of LoRA on `params`."""
    accumulate = config.loop.micro_batches > 1
    est = estimate_training_memory(
        cfg, optimizer, mesh=mesh, micro_batch=config.data.batch_size //
        config.loop.micro_batches, seq_len=config.data.max_length,
        reference_on_the_fly=config.reference == "on_the_fly",
        lean_logprobs=config.get("lean_logprobs", False), accumulate=accumulate)
    if adapters is None:
        return est
    return lora.memory_estimate(est, params=params, param_axes=param_logical_axes(cfg),
                                adapters=adapters, optimizer=optimizer, mesh=mesh,
                                accumulate=accumulate)


def run(config):
    """Trains (resuming if the workdir has checkpoints) and returns (built, final state).

    With LoRA the state's params are the adapters; `policy_params(built, state)` merges them.
    """
    b = build(config)
    loop, optimizer = loop_and_optimizer(config, b["mesh"])
    est = memory_estimate(config, b["cfg"], optimizer, b["mesh"], params=b["params"],
                          adapters=b["train_params"] if b["lora"] else None)
    print(f"memory per device (estimate):\n{est.table()}", flush=True)
    state = train(loop, objective=b["objective"], optimizer=optimizer, params=b["train_params"],
                  model_cfg=b["cfg"], train_iter=b["train_it"], eval_batches=b["eval_batches"],
                  mesh=b["mesh"], meta={"config": config.to_json_best_effort()},
                  logical_axes=b["logical_axes"])
    if config.get("export_hf"):
        save_hf(os.path.join(config.workdir, "hf_export"), b["cfg"], policy_params(b, state))
    return b, state


def loop_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(LoopConfig)} - {"workdir", "seed"}


SAMPLING_KEYS = ("prompts", "samples", "max_len", "max_prompt_length", "max_new_tokens")


def decoding_phase(config, cfg, mesh):
    """The sampling phase of `config.dry_run_sampling` (keys SAMPLING_KEYS: one batch of
    `prompts` prompts x `samples`, the sampler's max_len, the longest prompt, new tokens).
    This runner samples nothing itself: the section sizes what its model is trained for. With
    algorithm "arm", GenARM's guided decoding: the trained ARM (merged, full size, in its
    param dtype) steers a base policy of the same shapes, each model with its own KV cache of
    the same rows and slots (sampling/strategies.py `Guided`); otherwise the trained policy
    samples alone."""
    from jaxalign.algorithms.run_rest import rollout_kv_bytes
    from jaxalign.models.sizing import param_bytes_per_device
    from jaxalign.train.memory import PhaseMemory

    sc = config.dry_run_sampling
    unknown = set(sc.keys()) - set(SAMPLING_KEYS)
    if unknown or set(SAMPLING_KEYS) - set(sc.keys()):
        raise ValueError(f"config.dry_run_sampling: keys {sorted(sc.keys())}; expected "
                         f"{list(SAMPLING_KEYS)}")
    kv = rollout_kv_bytes(cfg, mesh, **{k: sc[k] for k in SAMPLING_KEYS})
    params = param_bytes_per_device(cfg, mesh)
    guided = config.get("algorithm") == "arm"
    return PhaseMemory("sampling", params=params, kv_cache=kv * (2 if guided else 1),
                       other_models=params if guided else 0)


def dry_run(config) -> dict:
    """Builds the whole train step abstractly (jax.eval_shape) and sizes it on each slice of
    `config.dry_run_meshes` (named TPU slices or explicit meshes: `models.slices.sized_mesh`);
    allocates nothing, so a 7B config validates on a laptop. Reports the training phase, and a
    sampling phase where the config has a `dry_run_sampling` section (`decoding_phase`: for
    an ARM, the guided decoding it is trained for), else "-": this runner samples nothing."""
    from jaxalign.models.transformer import param_shapes
    from jaxalign.train.step import init_state, make_train_step

    cfg = resolve_model_config(config.model)
    check_reference(config)
    lcfg = lora_config(config)
    optimizer, _ = make_optimizer(**config.optim)
    params = param_shapes(cfg)
    adapters = (jax.eval_shape(lambda k: lora.init_lora(params, lcfg, k), jax.random.key(0))
                if lcfg else None)
    state = jax.eval_shape(lambda p: init_state(p, optimizer),
                           params if adapters is None else adapters)
    B, T = config.data.batch_size, config.data.max_length
    sds = jax.ShapeDtypeStruct
    batch = {f"{side}_{k}": sds((B, T), dt) for side in ("chosen", "rejected")
             for k, dt in (("tokens", np.int32), ("mask", bool), ("loss_mask", bool))}
    batch["weight"] = sds((B,), np.float32)
    on_the_fly = config.reference == "on_the_fly"
    if config.reference == "precomputed":
        batch.update(ref_chosen_logps=sds((B,), np.float32),
                     ref_rejected_logps=sds((B,), np.float32))

    def step(state, batch, rng, base):
        objective = preference_objective(cfg, loss=config.loss.name,
                                         loss_kwargs=dict(config.loss.kwargs),
                                         ref_params=base if on_the_fly else None,
                                         lean_logprobs=config.get("lean_logprobs", False),
                                         precomputed=config.reference == "precomputed")
        check_columns(objective, batch, "the dry run's batch")
        if lcfg:
            objective = lora.lora_objective(objective, base, lcfg)
        return make_train_step(objective, optimizer, config.loop.micro_batches)(state, batch, rng)

    new_state, metrics = jax.eval_shape(step, state, batch, jax.random.key(0), params)
    if jax.tree.structure(new_state) != jax.tree.structure(state):
        raise AssertionError("train step changes the state's structure")
    report = {"model": cfg, "metrics": sorted(metrics), "lora": lcfg,
              "trainable": lora.param_count(state.params)}

    sampling = config.get("dry_run_sampling")

    def phases_on(mesh):
        est = memory_estimate(config, cfg, optimizer, mesh, params=params, adapters=adapters)
        return est, [est.phase("training"),
                     decoding_phase(config, cfg, mesh) if sampling else "sampling"]

    if sampling and config.get("algorithm") == "arm":
        note = ("sampling: GenARM's guided decoding after training (not part of this run): a "
                "base of the ARM's shapes (params) guided by the merged ARM (other models), "
                "a KV cache each; " + ", ".join(f"{k} {sampling[k]}" for k in SAMPLING_KEYS))
    elif sampling:
        note = ("sampling: the trained policy sampling (not part of this run); "
                + ", ".join(f"{k} {sampling[k]}" for k in SAMPLING_KEYS))
    else:
        note = ("sampling: - (this run trains on a fixed preference set and samples nothing; "
                "its evaluation scores log-probs)")
    report.update(size_on_meshes(config.get("dry_run_meshes"), phases_on, note=note,
                                 batch=(B, config.loop.micro_batches)))
    return report
