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


class Checkpointer:
    def __init__(self, directory: str, model_cfg, *, keep: int = 3, async_save: bool = True,
                 best_metric: str | None = None, best_mode: str = "max"):
        self.directory = os.path.abspath(directory)
        self.model_cfg = model_cfg
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                            enable_async_checkpointing=async_save)
        self.last = ocp.CheckpointManager(os.path.join(self.directory, "last"), options=opts)
        self.best = None
        if best_metric:
            best_opts = ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode,
                enable_async_checkpointing=async_save)
            self.best = ocp.CheckpointManager(os.path.join(self.directory, "best"),
                                              options=best_opts)

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
        _compare(meta["model"], _config_dict(self.model_cfg),
                 os.path.join(str(manager.directory), str(step)))
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
