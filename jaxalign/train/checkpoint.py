"""Orbax checkpoints of the train state, the data iterator position and the run's config.

Each save is one Orbax step directory holding `state` (params, optimizer state, step), `data`
(the iterator's JSON state) and `meta` (model config and user metadata). Orbax writes into a
temporary directory and renames it when complete, so a killed run never leaves a half-written
checkpoint that restore would pick up. `Checkpointer` keeps the last `keep` checkpoints in
`<dir>/last` and, when given an eval metric, the best one in `<dir>/best`.

Damage after the save (a truncated or deleted file, lost metadata, flipped bits) is found at
restore: `meta` records a checksum of every saved array (`jaxalign.checksum`, computed on the
devices before the save starts), a fingerprint of `data` and one of itself, and each is checked
against what is read back. A damaged checkpoint is moved aside to `<step>.damaged` (kept for
inspection, never restored, never counted by Orbax's `keep`) with a warning naming it, and the
next older one is restored; with none left the error names every damaged one and what is
wrong. Only an intact checkpoint written by another run (another architecture, LoRA rank,
optimizer) is a `CheckpointMismatch`. A state with a non-finite parameter is never saved.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxalign import io
from jaxalign.checksum import data_fingerprint, leaf_checksums, leaf_path

ITEMS = ("state", "data", "meta")


class CheckpointMismatch(ValueError):
    """An intact checkpoint written for another model or another train state."""


class DamagedCheckpoint(ValueError):
    """A checkpoint whose files are missing, truncated or do not hold what was saved."""


def _config_dict(model_cfg) -> dict:
    d = dataclasses.asdict(model_cfg)
    return json.loads(json.dumps(d, default=str))


def _compare(saved: dict, current: dict, where: str) -> None:
    for key in sorted(set(saved) | set(current)):
        if key in ("dtype", "remat", "scan_layers", "attention_impl", "logprob_impl"):
            continue  # execution choices: safe to change between runs
        if saved.get(key) != current.get(key):
            raise CheckpointMismatch(
                f"{where}: checkpoint was written for a model with {key}={saved.get(key)!r}, "
                f"this run has {key}={current.get(key)!r} (another architecture?)")


def _leaf_shapes(tree) -> dict[str, tuple]:
    """{"params/layers/attn/q/lora_a": shape, ...}: paths spelled alike for a live or abstract
    tree and for Orbax's saved metadata (dict keys, dataclass fields and sequence indices)."""
    return {leaf_path(path): tuple(x.shape)
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _recorded(checksums: dict[str, str]) -> dict[str, tuple[tuple, str]]:
    """{path: (shape, dtype)} of the arrays `leaf_checksums` described ("float32[2, 8]:..")."""
    out = {}
    for path, s in checksums.items():
        head = s.rsplit(":", 2)[0]
        out[path] = (tuple(json.loads(head[head.index("["):])), head[:head.index("[")])
    return out


def _compare_state(saved: dict[str, tuple], target, where: str, shown: int = 4,
                   dtypes: dict[str, str] | None = None) -> None:
    """A clear error, before Orbax reads an array, when the saved train state (`saved`: {path:
    shape}, read from intact metadata) is not the tree this run builds: another LoRA rank or
    targets, full fine-tune vs adapters, another head or optimizer (the model configs already
    matched). `dtypes` ({path: dtype}, when recorded) are compared too."""
    want = _leaf_shapes(target)
    diffs = [f"{k}: saved {saved[k]}, this run {want[k]}" for k in sorted(saved.keys() & want)
             if saved[k] != want[k]]
    if dtypes:
        have = {leaf_path(p): str(x.dtype)
                for p, x in jax.tree_util.tree_leaves_with_path(target)}
        diffs += [f"{k}: saved {dtypes[k]}, this run {have[k]}"
                  for k in sorted(dtypes.keys() & have) if dtypes[k] != have[k]]
    diffs += [f"{k}: only in the checkpoint" for k in sorted(saved.keys() - want.keys())]
    diffs += [f"{k}: only in this run" for k in sorted(want.keys() - saved.keys())]
    if diffs:
        more = f"; and {len(diffs) - shown} more" if len(diffs) > shown else ""
        raise CheckpointMismatch(
            f"{where}: the checkpoint holds another train state than this run builds (same "
            "model; another LoRA rank or targets, adapters vs a full fine-tune, another head or "
            "optimizer?): " + "; ".join(diffs[:shown]) + more)


@jax.jit
def _finite(leaves: list) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def _nonfinite_params(state) -> list[str]:
    """Paths of the float parameter leaves (under `params`) that hold a NaN or an inf."""
    flat = [(leaf_path(p), x) for p, x in jax.tree_util.tree_leaves_with_path(state)]
    flat = [(k, x) for k, x in flat if k.split("/")[0] == "params"
            and jnp.issubdtype(x.dtype, jnp.inexact)]
    if not flat:
        return []
    ok = jax.device_get(_finite([x for _, x in flat]))
    return [k for (k, _), good in zip(flat, ok) if not good]


def _cause(e: BaseException, limit: int = 300) -> str:
    """One line for an error from deep inside Orbax, TensorStore or json: the innermost
    message of the chain (TensorStore's names the file or array), without its spec dump."""
    def inner(x):
        return x.__cause__ or (None if x.__suppress_context__ else x.__context__)

    while inner(e) is not None:
        e = inner(e)
    text = str(e).split(" [tensorstore_spec=")[0].strip().splitlines()
    text = text[0] if text else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _check_files(where: str) -> None:
    """The step directory holds its three items and the state's array metadata."""
    if not io.isdir(where):
        raise FileNotFoundError(f"{where}: no such checkpoint")
    missing = [i for i in ITEMS if not io.isdir(io.join(where, i))]
    if missing:
        what = "is empty" if not io.listdir(where) else "has no " + ", ".join(
            f"{i}/" for i in missing)
        raise DamagedCheckpoint(f"{where}: damaged checkpoint: the step directory {what}")
    state_dir = io.join(where, "state")
    needed = ["_METADATA"] + (["manifest.ocdbt"] if any(  # Orbax's OCDBT format
        n.startswith("ocdbt.process_") for n in io.listdir(state_dir)) else [])
    for name in needed:
        if not io.exists(io.join(state_dir, name)):
            raise DamagedCheckpoint(f"{where}: damaged checkpoint: state/{name} is missing")


def _read_meta(manager, step: int, where: str) -> dict:
    """The step's `meta` item, checked against the fingerprint saved in it (when there is one:
    checkpoints written before it have none)."""
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta["meta"]
    except Exception as e:  # noqa: BLE001 (Orbax and json raise many types)
        raise DamagedCheckpoint(f"{where}: damaged checkpoint: cannot read meta/: "
                                f"{_cause(e)}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise DamagedCheckpoint(f"{where}: damaged checkpoint: meta/ holds no model config")
    fingerprint = meta.pop("meta_fingerprint", None)
    if fingerprint is not None and fingerprint != data_fingerprint(meta):
        raise DamagedCheckpoint(f"{where}: damaged checkpoint: meta/ does not match the "
                                "fingerprint saved with it (corrupt or edited)")
    return meta


def _saved_arrays(manager, step: int, where: str, checksums: dict | None):
    """({path: shape}, {path: dtype} or None) of the saved state: the record in `meta` (Orbax's
    array metadata must list the same), else Orbax's list alone."""
    try:
        on_disk = manager.item_metadata(step)["state"]
        on_disk = _leaf_shapes(on_disk) if on_disk is not None else {}
    except Exception as e:  # noqa: BLE001
        raise DamagedCheckpoint(f"{where}: damaged checkpoint: cannot read the state's array "
                                f"metadata (state/_METADATA, state/manifest.ocdbt): "
                                f"{_cause(e)}") from None
    if checksums is None:
        if not on_disk:
            raise DamagedCheckpoint(f"{where}: damaged checkpoint: the state's array metadata "
                                    "(state/_METADATA) lists no arrays")
        return on_disk, None
    record = _recorded(checksums)
    saved = {k: shape for k, (shape, _) in record.items()}
    if on_disk != saved:
        odd = sorted(k for k in saved.keys() | on_disk.keys() if saved.get(k) != on_disk.get(k))
        raise DamagedCheckpoint(
            f"{where}: damaged checkpoint: the state's array metadata (state/_METADATA) does "
            f"not list the arrays saved ({len(odd)} differ, e.g. {odd[0]}: saved "
            f"{saved.get(odd[0])}, listed {on_disk.get(odd[0])})")
    return saved, {k: dtype for k, (_, dtype) in record.items()}


class Checkpointer:
    def __init__(self, directory: str, model_cfg, *, keep: int = 3, async_save: bool = True,
                 best_metric: str | None = None, best_mode: str = "max"):
        self.directory = io.absolute(directory)  # (a gs:// URL stays one)
        self.model_cfg = model_cfg
        # Each manager names its own barriers: Orbax keys a save's multi-process barriers by
        # the step alone (`async_write_complete.<step>`), so "best" and "last" saving the same
        # step at once (the final step) would wait at one barrier twice, and a process aborts
        # ("Barrier ... is already ongoing").
        sync = lambda name: ocp.options.MultiprocessingOptions(  # noqa: E731
            barrier_sync_key_prefix=f"jaxalign_{name}")
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                            enable_async_checkpointing=async_save,
                                            multiprocessing_options=sync("last"))
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
                enable_async_checkpointing=async_save, multiprocessing_options=sync("best"))
            self.best = ocp.CheckpointManager(os.path.join(self.directory, "best"),
                                              options=best_opts, item_handlers=handlers())

    def _args(self, manager, step: int, state, data_state, meta):
        """The items of a save, with the checksums and fingerprints `restore` checks."""
        bad = _nonfinite_params(state)
        if bad:
            raise ValueError(
                f"{os.path.join(str(manager.directory), str(step))}: refusing to save a state "
                f"whose parameters are not finite (NaN or inf in {', '.join(bad[:4])})")
        data_state = data_state or {}
        meta = {"model": _config_dict(self.model_cfg), **(meta or {}),
                "checksums": leaf_checksums(state), "data_fingerprint":
                data_fingerprint(data_state)}
        meta["meta_fingerprint"] = data_fingerprint(meta)
        return ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state, data_state: dict | None = None, meta: dict | None = None,
             *, force: bool = False) -> None:
        self.last.save(step, args=self._args(self.last, step, state, data_state, meta),
                       force=force)

    def save_best(self, step: int, state, metrics: dict, data_state=None, meta=None) -> None:
        if self.best is not None:
            self.best.save(step, args=self._args(self.best, step, state, data_state, meta),
                           metrics={k: float(v) for k, v in metrics.items()})

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def restore(self, abstract_state, step: int | None = None, *, which: str = "last"):
        """(state, data_state, meta) of `step` (default latest); shardings from the target.

        Without `step`, a damaged checkpoint is moved aside (warning) and the next older one
        restored; `DamagedCheckpoint` when none is intact. A given `step` that is damaged
        raises `DamagedCheckpoint` and is left where it is."""
        manager = self.best if which == "best" else self.last
        if step is not None:
            return self._restore(manager, step, abstract_state)
        damaged = []
        for s in sorted(manager.all_steps(), reverse=True):
            try:
                return self._restore(manager, s, abstract_state)
            except DamagedCheckpoint as e:
                moved = self._set_aside(manager, s, e)
                damaged.append(f"{e} (moved to {moved})")
                warnings.warn(f"{e}; moved it to {moved} and restoring the next older "
                              "checkpoint, if any", stacklevel=2)
        if damaged:
            then = ("run again to start from step 0" if which == "last" else
                    "there is no older best checkpoint")
            raise DamagedCheckpoint(
                f"{manager.directory}: no intact checkpoint to restore: " + "; ".join(damaged)
                + f". The damaged ones stay under their new names; {then}, or put an intact "
                "copy back")
        raise FileNotFoundError(f"{manager.directory}: no checkpoint to restore")

    def _restore(self, manager, step: int, abstract_state):
        """One step's (state, data, meta), checked against its record; DamagedCheckpoint or
        CheckpointMismatch (intact, but another run's) otherwise."""
        where = os.path.join(str(manager.directory), str(step))
        _check_files(where)
        meta = _read_meta(manager, step, where)
        _compare(meta["model"], _config_dict(self.model_cfg), where)
        checksums = meta.get("checksums")  # absent in checkpoints written before them
        saved, dtypes = _saved_arrays(manager, step, where, checksums)
        _compare_state(saved, abstract_state, where, dtypes=dtypes)
        read = {"data": ocp.args.JsonRestore(),
                "state": ocp.args.StandardRestore(abstract_state)}
        for item, args in read.items():
            try:
                read[item] = manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
            except (jax.errors.JaxRuntimeError, MemoryError):
                raise  # out of memory is not damage
            except Exception as e:  # noqa: BLE001 (TensorStore raises bare Exception)
                raise DamagedCheckpoint(f"{where}: damaged checkpoint: cannot read {item}/: "
                                        f"{_cause(e)}") from None
        state, data = read["state"], read["data"]
        if checksums is not None:
            got = leaf_checksums(state)
            bad = sorted(k for k in checksums if got.get(k) != checksums[k])
            if bad:
                raise DamagedCheckpoint(
                    f"{where}: damaged checkpoint: {len(bad)} array(s) read back differ from "
                    f"the ones saved (checksum): {', '.join(bad[:4])}")
        bad = _nonfinite_params(state)
        if bad:  # only checkpoints written before the NaN guard can hold one
            raise DamagedCheckpoint(f"{where}: unusable checkpoint: non-finite parameters in "
                                    f"{', '.join(bad[:4])}")
        expected = meta.get("data_fingerprint")
        if expected is not None and expected != data_fingerprint(data):
            raise DamagedCheckpoint(f"{where}: damaged checkpoint: data/ (the iterator's "
                                    "position) does not match the fingerprint saved with it")
        return state, data, meta

    def _set_aside(self, manager, step: int, error: DamagedCheckpoint) -> str:
        """Renames a damaged step to `<step>.damaged` (Orbax then neither restores nor counts
        it, and the step can be saved again); returns the new path."""
        src = os.path.join(str(manager.directory), str(step))
        dst, n = f"{src}.damaged", 1
        while io.exists(dst):
            n += 1
            dst = f"{src}.damaged{n}"
        if jax.process_index() == 0:
            try:
                if io.is_url(src):  # no rename on an object store: epath copies, then deletes
                    from etils import epath
                    epath.Path(src).rename(dst)
                else:
                    os.rename(src, dst)
            except OSError as e:
                raise DamagedCheckpoint(f"{error}; could not move it aside ({e}): move or "
                                        "delete it, then run again") from None
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"jaxalign_set_aside_{step}")
        manager.reload()
        return dst

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
