"""Orbax checkpoints of the train state, the data iterator position and the run's config.

Each save is one Orbax step directory holding `state` (params, optimizer state, step), `data`
(the iterator's JSON state) and `meta` (model config and user metadata). Orbax writes into a
temporary directory and renames it when complete, so a killed run never leaves a half-written
checkpoint that restore would pick up. `Checkpointer` keeps the last `keep` checkpoints in
`<dir>/last` and, when given an eval metric, the best one in `<dir>/best`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
    pass


def _config_dict(model_cfg) -> dict:
    d = dataclasses.asdict(model_cfg)
    return json.loads(json.dumps(d, default=str))


def _compare(saved: dict, current: dict, where: str) -> None:
    for key in sorted(set(saved) | set(current)):
        if key in ("dtype", "remat", "scan_layers", "attention_impl"):
            continue  # execution choices: safe to change between runs
        if saved.get(key) != current.get(key):
            raise CheckpointMismatch(
                f"{where}: checkpoint was written for a model with {key}={saved.get(key)!r}, "
                f"this run has {key}={current.get(key)!r} (another architecture?)")


def _leaf_shapes(tree) -> dict[str, tuple]:
    """{"params/layers/attn/q/lora_a": shape, ...}: paths spelled alike for a live or abstract
    tree and for Orbax's saved metadata (dict keys, dataclass fields and sequence indices)."""
    name = lambda k: str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
    return {"/".join(name(k) for k in path): tuple(x.shape)
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _compare_state(saved_metadata, target, where: str, shown: int = 4) -> None:
    """A clear error, before Orbax reads an array, when the saved train state is not the tree
    this run builds: another LoRA rank or targets, full fine-tune vs adapters, another head or
    optimizer (the model configs already matched)."""
    saved, want = _leaf_shapes(saved_metadata), _leaf_shapes(target)
    diffs = [f"{k}: saved {saved[k]}, this run {want[k]}" for k in sorted(saved.keys() & want)
             if saved[k] != want[k]]
    diffs += [f"{k}: only in the checkpoint" for k in sorted(saved.keys() - want.keys())]
    diffs += [f"{k}: only in this run" for k in sorted(want.keys() - saved.keys())]
    if diffs:
        more = f"; and {len(diffs) - shown} more" if len(diffs) > shown else ""
        raise CheckpointMismatch(
            f"{where}: the checkpoint holds another train state than this run builds (same "
            "model; another LoRA rank or targets, adapters vs a full fine-tune, another head or "
            "optimizer?): " + "; ".join(diffs[:shown]) + more)


class Checkpointer:
    def __init__(self, directory: str, model_cfg, *, keep: int = 3, async_save: bool = True,
                 best_metric: str | None = None, best_mode: str = "max"):
        self.directory = os.path.abspath(directory)
        self.model_cfg = model_cfg
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                            enable_async_checkpointing=async_save)
        # Handlers named up front: a fresh manager can then read a step's metadata (the saved
        # tree's shapes, compared before restoring) and restore items without warnings.
        handlers = lambda: dict(state=ocp.StandardCheckpointHandler(),
                                data=ocp.JsonCheckpointHandler(),
                                meta=ocp.JsonCheckpointHandler())
        self.last = ocp.CheckpointManager(os.path.join(self.directory, "last"), options=opts,
                                          item_handlers=handlers())
        self.best = None
        if best_metric:
            best_opts = ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode,
                enable_async_checkpointing=async_save)
            self.best = ocp.CheckpointManager(os.path.join(self.directory, "best"),
                                              options=best_opts, item_handlers=handlers())

    def _args(self, state, data_state, meta):
        meta = {"model": _config_dict(self.model_cfg), **(meta or {})}
        return ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}),
                                  meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state, data_state: dict | None = None, meta: dict | None = None,
             *, force: bool = False) -> None:
        self.last.save(step, args=self._args(state, data_state, meta), force=force)

    def save_best(self, step: int, state, metrics: dict, data_state=None, meta=None) -> None:
        if self.best is not None:
            self.best.save(step, args=self._args(state, data_state, meta),
                           metrics={k: float(v) for k, v in metrics.items()})

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def restore(self, abstract_state, step: int | None = None, *, which: str = "last"):
        """(state, data_state, meta) of `step` (default latest); shardings from the target."""
        manager = self.best if which == "best" else self.last
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{manager.directory}: no checkpoint to restore")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        where = os.path.join(str(manager.directory), str(step))
        _compare(meta["model"], _config_dict(self.model_cfg), where)
        _compare_state(manager.item_metadata(step)["state"], abstract_state, where)
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return out["state"], out["data"], meta

    def wait(self) -> None:
        self.last.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.last.close()
        if self.best is not None:
            self.best.close()


def abstract_like(tree: Any):
    """ShapeDtypeStructs (with shardings) of a live pytree: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)
