"""Reward-model training end to end from a config (see experiments/reward_toy.py).

    python -m jaxalign --config experiments/reward_toy.py:smoke --workdir /tmp/rm_toy

Config sections (`algorithm = "reward_bt"`):
  model:     preset (random init) | hf_path (a causal LM: its backbone, fresh head) |
             reward_hf_path (a *ForSequenceClassification checkpoint); dtype overrides;
             pad_token_id (default: the tokenizer's)
  tokenizer: "toy" or a local tokenizer directory
  data:      train / eval paths (or toy=True), max_length, max_prompt_length, truncation_mode,
             batch_size, on_error
  loss:      margin (a constant; a `margin` column is not read from files yet)
  optim, loop, mesh: see jaxalign.train;  export_hf: write a HF reward checkpoint at the end
"""

from __future__ import annotations

import os

import jax

from jaxalign.algorithms.runner import (Mapped, load_split, load_tokenizer, loop_and_optimizer,
                                        model_overrides, pair_weight, resolve_model_config,
                                        toy_data_paths)
from jaxalign.data import BatchIterator
from jaxalign.distributed import process_rows
from jaxalign.models.hf import load_hf
from jaxalign.objectives import bradley_terry_objective, check_columns, pairwise_accuracy
from jaxalign.reward.hf import load_reward_hf, save_reward_hf
from jaxalign.reward.model import init_reward_params, reward_logical_axes
from jaxalign.sharding import make_mesh
from jaxalign.train.trainer import place_params, train


def load_reward_model(mc, seed: int, mesh, pad_token_id: int | None):
    """(cfg, params on `mesh`) from the `model` section."""
    if mc.get("reward_hf_path"):
        return load_reward_hf(mc.reward_hf_path, mesh=mesh, **model_overrides(mc))
    if mc.get("hf_path"):
        cfg, backbone = load_hf(mc.hf_path, **model_overrides(mc))
    else:
        cfg, backbone = resolve_model_config(mc), None
    if cfg.pad_token_id is None:
        cfg = cfg.replace(pad_token_id=mc.get("pad_token_id", pad_token_id))
    params = init_reward_params(cfg, jax.random.key(seed), backbone=backbone)
    return cfg, place_params(params, cfg, mesh, reward_logical_axes(cfg))


def run(config):
    """Trains (resuming from the workdir's checkpoints) -> dict(cfg, state, eval_accuracy)."""
    mesh = make_mesh(**config.mesh)
    loop, optimizer = loop_and_optimizer(config, mesh)  # checked before anything compiles
    tokenizer = load_tokenizer(config.tokenizer)
    cfg, params = load_reward_model(config.model, config.seed, mesh, tokenizer.pad_token_id)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens but model "
                         f"vocab_size is {cfg.vocab_size}")
    d = config.data
    kw = dict(max_length=d.max_length, max_prompt_length=d.max_prompt_length,
              truncation_mode=d.truncation_mode, on_error=d.on_error)
    train_path, eval_path = toy_data_paths(config)
    train_ds = load_split("preference", train_path, tokenizer, "train", **kw)
    eval_ds = load_split("preference", eval_path, tokenizer, "eval", **kw)
    # each process reads its own rows of every batch (all of them when it runs alone)
    train_it = Mapped(BatchIterator(train_ds, batch_size=d.batch_size, seed=config.seed,
                                    **process_rows()), pair_weight)
    eval_batches = [pair_weight(b) for b in BatchIterator(
        eval_ds, batch_size=d.batch_size, shuffle=False, num_epochs=1, **process_rows())]
    objective = bradley_terry_objective(cfg, margin=config.loss.margin)
    if eval_batches:  # train batches have the same columns
        check_columns(objective, eval_batches[0], f"{eval_path} batches")
    before = pairwise_accuracy(cfg, params, eval_batches, mesh)
    state = train(loop, objective=objective, optimizer=optimizer, params=params, model_cfg=cfg,
                  train_iter=train_it, eval_batches=eval_batches, mesh=mesh,
                  logical_axes=reward_logical_axes(cfg),
                  meta={"config": config.to_json_best_effort()})
    after = pairwise_accuracy(cfg, state.params, eval_batches, mesh)
    print(f"held-out pairwise accuracy: {before:.3f} -> {after:.3f} "
          f"({len(eval_ds)} pairs)", flush=True)
    if config.get("export_hf"):
        save_reward_hf(os.path.join(config.workdir, "hf_export"), cfg, state.params)
    return dict(cfg=cfg, state=state, tokenizer=tokenizer, eval_accuracy=after,
                initial_eval_accuracy=before)
