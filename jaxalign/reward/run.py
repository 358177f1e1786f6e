"""Reward-model training end to end from a config (see experiments/reward_toy.py).

    python -m jaxalign.reward --config experiments/reward_toy.py:smoke --workdir /tmp/rm_toy

Config sections:
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
import numpy as np

from jaxalign.data import BatchIterator, load_dataset, toy
from jaxalign.models.hf import load_hf
from jaxalign.models.presets import preset
from jaxalign.reward.hf import load_reward_hf, save_reward_hf
from jaxalign.reward.model import init_reward_params, reward_logical_axes
from jaxalign.reward.train import bradley_terry_objective, pairwise_accuracy
from jaxalign.sharding import make_mesh
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, place_params, train


class _Weighted:
    """A resumable batch iterator whose batches get `weight` (1 real row, 0 padding row)."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        return with_weight(next(self.it))

    def state(self):
        return self.it.state()

    def restore(self, state):
        self.it.restore(state)


def with_weight(batch: dict) -> dict:
    return {**batch, "weight": batch["chosen_mask"].any(-1).astype(np.float32)}


def load_tokenizer(spec: str):
    if spec == "toy":
        return toy.word_tokenizer()
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(spec, trust_remote_code=False, local_files_only=True)


def load_reward_model(mc, seed: int, mesh, pad_token_id: int | None):
    """(cfg, params on `mesh`) from the `model` section."""
    overrides = {k: mc[k] for k in ("dtype", "param_dtype", "remat", "scan_layers") if k in mc}
    if mc.get("reward_hf_path"):
        return load_reward_hf(mc.reward_hf_path, mesh=mesh, **overrides)
    if mc.get("hf_path"):
        cfg, backbone = load_hf(mc.hf_path, **overrides)
    else:
        cfg, backbone = preset(mc.preset, **overrides), None
        for key in ("vocab_size", "initializer_range"):
            if mc.get(key):
                cfg = cfg.replace(**{key: mc[key]})
    if cfg.pad_token_id is None:
        cfg = cfg.replace(pad_token_id=mc.get("pad_token_id", pad_token_id))
    params = init_reward_params(cfg, jax.random.key(seed), backbone=backbone)
    return cfg, place_params(params, cfg, mesh, reward_logical_axes(cfg))


def data_paths(config) -> tuple[str, str]:
    d = config.data
    if d.get("toy"):
        root = os.path.join(config.workdir, "data")
        return (toy.write_preference_jsonl(os.path.join(root, "train.jsonl"), d.toy_train, 0),
                toy.write_preference_jsonl(os.path.join(root, "eval.jsonl"), d.toy_eval, 1))
    return d.train, d.eval


def run(config):
    """Trains (resuming from the workdir's checkpoints) -> dict(cfg, state, eval_accuracy)."""
    mesh = make_mesh(**config.mesh)
    tokenizer = load_tokenizer(config.tokenizer)
    cfg, params = load_reward_model(config.model, config.seed, mesh, tokenizer.pad_token_id)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens but model "
                         f"vocab_size is {cfg.vocab_size}")
    d = config.data
    kw = dict(max_length=d.max_length, max_prompt_length=d.max_prompt_length,
              truncation_mode=d.truncation_mode, on_error=d.on_error)
    train_path, eval_path = data_paths(config)
    train_ds, _ = load_dataset("preference", train_path, tokenizer, **kw)
    eval_ds, _ = load_dataset("preference", eval_path, tokenizer, **kw)
    train_it = _Weighted(BatchIterator(train_ds, batch_size=d.batch_size, seed=config.seed))
    eval_batches = [with_weight(b) for b in BatchIterator(
        eval_ds, batch_size=d.batch_size, shuffle=False, num_epochs=1)]
    objective = bradley_terry_objective(cfg, margin=config.loss.margin)
    optimizer, _ = make_optimizer(**config.optim)
    before = pairwise_accuracy(cfg, params, eval_batches)
    loop = LoopConfig(workdir=config.workdir, seed=config.seed, **config.loop)
    state = train(loop, objective=objective, optimizer=optimizer, params=params, model_cfg=cfg,
                  train_iter=train_it, eval_batches=eval_batches, mesh=mesh,
                  logical_axes=reward_logical_axes(cfg),
                  meta={"config": config.to_json_best_effort()})
    after = pairwise_accuracy(cfg, state.params, eval_batches)
    print(f"held-out pairwise accuracy: {before:.3f} -> {after:.3f} "
          f"({len(eval_ds)} pairs)", flush=True)
    if config.get("export_hf"):
        save_reward_hf(os.path.join(config.workdir, "hf_export"), cfg, state.params)
    return dict(cfg=cfg, state=state, tokenizer=tokenizer, eval_accuracy=after,
                initial_eval_accuracy=before)
