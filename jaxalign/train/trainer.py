"""The training loop shared by every algorithm: resume, step, evaluate, log, checkpoint.

`Trainer` holds the parts (restore / step / evaluate / save) for loops that interleave training
with other work (the iteration driver of `jaxalign.algorithms`); `train(...)` is the plain loop
over them:

    state = train(loop, objective=objective, optimizer=optimizer, params=params,
                  model_cfg=cfg, train_iter=it, eval_batches=batches)

It restores the latest checkpoint of `workdir` if there is one, so an interrupted run started
again with the same command continues exactly where it stopped: parameters, optimizer state,
step and data position all come back, and the step's rng is `fold_in(seed, step)`.
SIGTERM (TPU preemption) saves a checkpoint and raises `Preempted` (exit code 75); with several
processes, SIGTERM on any of them stops all at the same step (`jaxalign.distributed`). A step whose
loss, gradients or updated parameters are not finite is not applied and stops the run, naming
the step and the last checkpoint, with the offending batch saved next to the checkpoints; the
state in memory and every checkpoint stay finite. A damaged newest checkpoint is moved aside
with a warning and the one before it restored (`jaxalign.train.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import weakref
from typing import Any, Callable, Iterable

import jax
import numpy as np
from tqdm import tqdm

from jaxalign import distributed, io
from jaxalign import sharding as shd
from jaxalign.models.sizing import place_params  # the one copy; runners import it from here too
from jaxalign.train.checkpoint import Checkpointer, abstract_like
from jaxalign.train.metrics import MetricWriter
from jaxalign.train.step import (TrainState, compile_step, eval_metrics, init_state,
                                 make_train_step)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    workdir: str
    total_steps: int
    seed: int = 0
    micro_batches: int = 1
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    best_metric: str | None = None  # e.g. "eval/reward_accuracy"
    async_checkpoints: bool = True
    progress_bar: bool = True

    def __post_init__(self):  # checked before anything compiles
        for name, low in (("total_steps", 0), ("micro_batches", 1), ("log_every", 1),
                          ("eval_every", 0), ("checkpoint_every", 1), ("keep_checkpoints", 1)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
                why = " (0 would delete every checkpoint)" if name == "keep_checkpoints" else ""
                raise ValueError(f"loop.{name} must be an integer >= {low}{why}, got {v!r}")
        if self.best_metric is not None and not str(self.best_metric).startswith("eval/"):
            raise ValueError(f"loop.best_metric names an evaluation metric, 'eval/<name>' "
                             f"(e.g. 'eval/reward_accuracy'), got {self.best_metric!r}")


def _programs(objective, optimizer, micro_batches: int, mesh, params, cache: dict | None):
    """(state, init, step, eval): the jitted programs of an (objective, optimizer), taken from
    `cache` when it holds them (same objects, same state shardings), else made (and stored)."""
    key = (objective, optimizer, micro_batches, mesh)
    if cache is not None and key in cache:
        init, evaluate = cache[key]
    else:
        init = jax.jit(lambda p: init_state(p, optimizer))
        evaluate = jax.jit(lambda p, b, r: eval_metrics(objective, p, b, r))
    state = init(params)
    shardings, treedef = jax.tree.flatten(jax.tree.map(lambda x: x.sharding, state))
    step_key = key + (treedef, tuple(shardings))
    step = cache.get(step_key) if cache is not None else None
    if step is None:
        step = compile_step(make_train_step(objective, optimizer, micro_batches),
                            jax.tree.unflatten(treedef, shardings), None, mesh)
    if cache is not None:
        cache[key], cache[step_key] = (init, evaluate), step
    return state, step, evaluate


def _tokens(batch: dict) -> int:
    return int(sum(np.asarray(v).sum() for k, v in batch.items() if k.endswith("mask")
                   and "loss" not in k))


class Trainer:
    """One training run's state, compiled step, checkpoints and metrics, driven step by step.

    `evaluate_fn(params) -> {name: float}`: extra held-out metrics computed on the host (e.g.
    a reward model's score of samples on held-out prompts), logged under `eval/` beside the
    objective's metrics on `eval_batches`, and usable as `loop.best_metric`.
    `logical_axes`: a tree of logical axis-name tuples matching `params`, for param trees that
    are not a plain LM of `model_cfg` (a reward model with a head, LoRA adapters, ...).
    `programs`: a dict the caller keeps across trainings; trainings with the same objective and
    optimizer objects then trace and compile their step once (ReST's improve steps). It holds
    what the objective closes over (a frozen reference's params) until the caller drops it.
    Several processes: each passes its own rows of every batch (`BatchIterator(process_index=,
    process_count=)`), assembled into one global batch; process 0 writes the metrics.
    Use as a context manager (or call `close()`): it waits for asynchronous saves. A Trainer
    holds its workdir (`io.WorkdirLock`) from construction to `close()`: a second process on
    the same workdir is refused, naming the first one's host and pid.
    """

    def __init__(self, loop: LoopConfig, *, objective, optimizer, params, model_cfg, mesh=None,
                 meta: dict | None = None, logical_axes=None, eval_batches: Iterable[dict] = (),
                 evaluate_fn: Callable[[Any], dict] | None = None, programs: dict | None = None):
        self.loop, self.meta = loop, meta
        # one run per workdir, refused before anything compiles; released by close() (or when
        # a Trainer whose __init__ failed is collected)
        lock = io.WorkdirLock(loop.workdir, jax.process_index()).acquire()
        self._unlock = weakref.finalize(self, lock.release)
        for name in ("metrics.jsonl", "tensorboard", "checkpoints", "checkpoints/last",
                     "checkpoints/best"):
            io.refuse_link(os.path.join(loop.workdir, name))  # Orbax would write through one
        self.mesh = mesh or shd.make_mesh(data=-1)
        params = place_params(params, model_cfg, self.mesh, logical_axes)
        self.state, self._step, self._eval = _programs(
            objective, optimizer, loop.micro_batches, self.mesh, params, programs)
        self.eval_batches, self.evaluate_fn = eval_batches, evaluate_fn
        self.ckpt = Checkpointer(os.path.join(loop.workdir, "checkpoints"), model_cfg,
                                 keep=loop.keep_checkpoints, async_save=loop.async_checkpoints,
                                 best_metric=loop.best_metric)
        self.writer = MetricWriter(loop.workdir, active=jax.process_index() == 0)
        self.rng = jax.random.key(loop.seed)
        self.sigterm = False
        # several processes: JAX's preemption service hears SIGTERM (`distributed.preempted`);
        # a Python handler would replace its own
        self._previous_handler = signal.signal(
            signal.SIGTERM, lambda *_: setattr(self, "sigterm", True)
        ) if jax.process_count() == 1 else None
        self._pending = None  # (step, metrics on device, host batch, tokens, t0): read one behind
        self._last_done = None  # when the last step's metrics were read back
        self._bar = None

    # ---- resume ----
    def restore(self, data_iter=None) -> int:
        """Restores the latest intact checkpoint (and the iterator's position); returns its
        step. Damaged ones newer than it are moved aside with a warning (`Checkpointer`)."""
        if self.ckpt.latest_step() is not None:
            self.state, data_state, _ = self.ckpt.restore(abstract_like(self.state))
            if data_iter is not None:
                data_iter.restore(data_state)
        step = int(self.state.step)
        self.writer.rewind(step)  # drop the rows a killed run logged after its last checkpoint
        return step

    def restore_best(self):
        """The params of the best checkpoint (by `loop.best_metric`); the last state's without
        one. A damaged best checkpoint is an error naming it (there is no older best)."""
        if self.ckpt.best is None or self.ckpt.best.latest_step() is None:
            return self.state.params
        self.ckpt.wait()
        state, _, _ = self.ckpt.restore(abstract_like(self.state), which="best")
        return state.params

    @property
    def params(self):
        return self.state.params

    # ---- step ----
    def _put(self, batch: dict, micro_batches: int = 1) -> dict:
        """The host batch on the mesh, rows split over the data-parallel axes (a row count that
        does not split is an error naming it and the devices). With several processes `batch`
        is this process's rows; the global batch is every process's, in process order."""
        for rows in {np.shape(x)[0] for x in jax.tree.leaves(batch) if np.ndim(x)}:
            shd.check_batch_rows(rows * jax.process_count(), self.mesh, micro_batches)
        return distributed.put_rows(batch, self.mesh)

    def step(self, host_batch: dict) -> None:
        """Dispatches one update; the previous step's metrics are read back meanwhile."""
        step = int(self.state.step) + 1 if self._pending is None else self._pending[0] + 1
        t0 = time.perf_counter()
        batch = self._put(host_batch, self.loop.micro_batches)
        self.state, metrics = self._step(self.state, batch, self.rng)
        self.flush()
        # tokens of the global batch: this process's, times the processes (equal row counts)
        self._pending = (step, metrics, host_batch, _tokens(host_batch) * jax.process_count(),
                         t0)

    def flush(self) -> dict | None:
        """Reads back the pending step's metrics and returns them; a step that was not finite
        (it changed nothing: `jaxalign.train.step`) raises FloatingPointError."""
        if self._pending is None:
            return None
        step, metrics, host_batch, ntok, t0 = self._pending
        self._pending = None
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if m.pop("nonfinite", 0.0):
            # neither it nor a step dispatched after it changed the state: number it back
            self.state = self.state.replace(step=jax.device_put(np.int32(step - 1),
                                                                self.state.step.sharding))
            part = f".process{jax.process_index()}" if jax.process_count() > 1 else ""
            path = os.path.join(self.loop.workdir, f"nonfinite_batch_step{step}{part}.npz")
            with io.open_for_write(path, "wb") as fh:
                np.savez(fh, **{k: v for k, v in host_batch.items()
                                if np.asarray(v).dtype != object})
            loss, norm = m["loss"], m["grad_norm"]
            why = (f"loss is {loss}" if not np.isfinite(loss) else
                   f"gradient norm is {norm} (loss {loss})" if not np.isfinite(norm) else
                   f"the update makes parameters non-finite (loss {loss}, gradient norm {norm}; "
                   "learning rate too large?)")
            last = self.ckpt.latest_step()
            ckpt = ("no checkpoint has been saved yet (a restart begins at step 0)"
                    if last is None else f"the last checkpoint is step {last} "
                    f"({os.path.join(self.ckpt.directory, 'last', str(last))})")
            raise FloatingPointError(
                f"step {step}: {why}. The update was not applied: the state is still step "
                f"{step - 1}'s, and {ckpt}; a restart meets this batch again. Batch saved to "
                f"{path}")
        # a step's time: from its dispatch or the previous step's completion, whichever is
        # later, to its completion. Not from its dispatch alone: where dispatch does not return
        # before the computation is done (XLA on CPU), that would also count the next step.
        done = time.perf_counter()
        m["step_seconds"] = done - max(t0, self._last_done or t0)
        m["tokens_per_s"] = ntok / max(m["step_seconds"], 1e-9)
        self._last_done = done
        if step % self.loop.log_every == 0 or step == self.loop.total_steps:
            self.writer.write(step, m)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens_per_s']:.0f}",
                                  refresh=False)
            self._bar.update(1)
        return m

    # ---- evaluate / save ----
    def evaluate(self, step: int) -> dict | None:
        """Weighted means of the objective's metrics over `eval_batches`, plus `evaluate_fn`'s;
        written under eval/ and returned as {"eval/<name>": value} (None when there is none)."""
        sums, total = {}, 0.0
        for b in self.eval_batches:
            m = jax.device_get(self._eval(self.state.params, self._put(b), self.rng))
            w = float(m.pop("examples"))
            total += w
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + w * float(v)
        out = {k: v / max(total, 1e-9) for k, v in sums.items()}
        if self.evaluate_fn is not None:
            out.update({k: float(v) for k, v in self.evaluate_fn(self.state.params).items()})
        best = self.loop.best_metric
        if best and best.removeprefix("eval/") not in out:
            raise ValueError(f"loop.best_metric {best!r} is not an evaluation metric of this "
                             f"run; it has {sorted('eval/' + k for k in out) or 'none'}")
        if not out:
            return None
        self.writer.write(step, out, prefix="eval")
        return {f"eval/{k}": v for k, v in out.items()}

    def save(self, data_state: dict | None = None) -> None:
        """Checkpoints the state after reading back the pending step (only finite states)."""
        self.flush()
        self.ckpt.save(int(self.state.step), self.state, data_state, self.meta, force=True)

    def save_best(self, metrics: dict | None, data_state: dict | None = None) -> None:
        """Offers the state to the best checkpoint (by `loop.best_metric`); a step it already
        holds (a resumed run repeating it, with the same state) is skipped."""
        step = int(self.state.step)
        if not (metrics and self.loop.best_metric) or step in self.ckpt.best.all_steps():
            return
        self.ckpt.save_best(step, self.state, metrics, data_state, self.meta)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            try:
                self.ckpt.wait()
                self.ckpt.close()
            finally:
                self.writer.close()
                if self._bar is not None:
                    self._bar.close()
                if self._previous_handler is not None:
                    signal.signal(signal.SIGTERM, self._previous_handler)
                self._unlock()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def preempted(self, step: int) -> bool:
        """Whether SIGTERM asks to stop after `step` (this process's signal, or with several
        processes any process's, agreed at the same step on all). Call once per step."""
        return distributed.preempted(step, self.sigterm)

    def progress(self, start: int) -> None:
        self._bar = tqdm(total=self.loop.total_steps, initial=start,
                         disable=not self.loop.progress_bar, dynamic_ncols=True)


def train(loop: LoopConfig, *, objective, optimizer, params, model_cfg, train_iter,
          eval_batches: Iterable[dict] = (), mesh=None, meta: dict | None = None,
          on_step: Callable[[int], Any] | None = None, logical_axes=None,
          evaluate_fn: Callable[[Any], dict] | None = None) -> TrainState:
    """Runs (or resumes) to `loop.total_steps`; returns the final state. Arguments as Trainer;
    `train_iter` is a resumable batch iterator (`next(it)`, `it.state()`, `it.restore(state)`).
    Raises `Preempted` (exit code 75) after saving a checkpoint when SIGTERM arrives, and
    FloatingPointError on a non-finite step (the update not applied, nothing non-finite saved)."""
    with Trainer(loop, objective=objective, optimizer=optimizer, params=params,
                 model_cfg=model_cfg, mesh=mesh, meta=meta, logical_axes=logical_axes,
                 eval_batches=list(eval_batches), evaluate_fn=evaluate_fn) as t:
        run_loop(t, train_iter, on_step)
        return t.state


EXIT_PREEMPTED = 75  # EX_TEMPFAIL of sysexits.h, "try again later": schedulers re-queue on it


class Preempted(SystemExit):
    """SIGTERM stopped training after the checkpoint of `step` was saved in `workdir`.

    A SystemExit, so nothing that follows training (an export, an evaluation, the next phase of
    a loop) runs on a half-trained state and `except Exception` does not swallow it; a script
    that does not catch it exits with EXIT_PREEMPTED (75), and `python -m jaxalign` prints
    one line first. Running the same command again resumes from that checkpoint."""

    def __init__(self, step: int, workdir: str):
        super().__init__(EXIT_PREEMPTED)
        self.step, self.workdir = step, workdir

    def __str__(self) -> str:
        return (f"preempted (SIGTERM) after saving the checkpoint of step {self.step} in "
                f"{self.workdir}; run the same command again to resume")


def run_loop(t: Trainer, train_iter, on_step: Callable[[int], Any] | None = None) -> None:
    """The loop of `train`: restore, evaluate at 0, step, checkpoint, evaluate (keeping the best
    by `loop.best_metric`). On SIGTERM: checkpoint, wait for the save, raise `Preempted`."""
    loop = t.loop
    start = t.restore(train_iter)
    t.progress(start)
    if start == 0:
        t.writer.rewind(-1)  # no checkpoint: every row a killed run logged goes, step 0's too
        t.evaluate(0)  # the baseline every curve starts from
    for step in range(start + 1, loop.total_steps + 1):
        t.step(next(train_iter))
        # evaluate before saving `last`: a run killed in between repeats the evaluation, so
        # the best checkpoint never misses one (save_best skips a step it already holds)
        if loop.eval_every and step % loop.eval_every == 0 or step == loop.total_steps:
            t.flush()
            t.save_best(t.evaluate(step), train_iter.state())
        stop = t.preempted(step)
        saved = step % loop.checkpoint_every == 0 or step == loop.total_steps or stop
        if saved:
            t.save(train_iter.state())
        if on_step is not None:
            on_step(step)
        # alone, checked after on_step too: a signal that came meanwhile is not lost (several
        # processes must all agree at one sync point per step, the one above)
        if stop or jax.process_count() == 1 and t.sigterm:
            if not saved:
                t.save(train_iter.state())
            t.ckpt.wait()  # on disk before the exit code says so
            raise Preempted(step, loop.workdir)
