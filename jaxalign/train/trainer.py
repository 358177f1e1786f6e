"""The training loop shared by every algorithm: resume, step, evaluate, log, checkpoint.

`train(...)` takes an objective (see `jaxalign.train.step`), initial params, a resumable batch
iterator (`next(it)`, `it.state()`, `it.restore(state)`) and the loop settings.
It restores the latest checkpoint of `workdir` if there is one, so an interrupted run started
again with the same command continues exactly where it stopped: parameters, optimizer state,
step and data position all come back, and the step's rng is `fold_in(seed, step)`.
SIGTERM (TPU preemption) saves a checkpoint and returns. A non-finite loss stops the run with the
offending batch saved next to the checkpoints, which keep only finite states.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxalign import sharding as shd
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


def _tokens(batch: dict) -> int:
    return int(sum(np.asarray(v).sum() for k, v in batch.items() if k.endswith("mask")
                   and "loss" not in k))


def train(loop: LoopConfig, *, objective, optimizer, params, model_cfg, train_iter,
          eval_batches: Iterable[dict] = (), mesh=None, meta: dict | None = None,
          on_step: Callable[[int], Any] | None = None, logical_axes=None) -> TrainState:
    """Runs (or resumes) to `loop.total_steps`; returns the final state.

    `logical_axes`: a tree of logical axis-name tuples matching `params`, for param trees that
    are not a plain LM of `model_cfg` (a reward model with a head, LoRA adapters, ...).
    """
    mesh = mesh or shd.make_mesh(data=-1)
    batch_spec = shd.batch_sharding(mesh)
    params = place_params(params, model_cfg, mesh, logical_axes)
    state = jax.jit(lambda p: init_state(p, optimizer))(params)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn = compile_step(make_train_step(objective, optimizer, loop.micro_batches),
                           state_shardings, None, mesh)
    eval_fn = jax.jit(lambda p, b, r: eval_metrics(objective, p, b, r))
    ckpt = Checkpointer(os.path.join(loop.workdir, "checkpoints"), model_cfg,
                        keep=loop.keep_checkpoints, async_save=loop.async_checkpoints,
                        best_metric=loop.best_metric)
    if ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore(abstract_like(state))
        train_iter.restore(data_state)
    writer = MetricWriter(loop.workdir)
    rng = jax.random.key(loop.seed)
    put = lambda b: jax.tree.map(lambda x: jax.device_put(  # noqa: E731
        x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            batch_spec.spec[0], *([None] * (np.ndim(x) - 1))))), b)

    stop = {"sigterm": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
    start = int(state.step)
    bar = tqdm(total=loop.total_steps, initial=start, disable=not loop.progress_bar,
               dynamic_ncols=True)
    pending = None  # (step, metrics on device, host batch, tokens, t0): read one step behind

    def finish(p):
        step, metrics, host_batch, ntok, t0 = p
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(m["loss"]):
            path = os.path.join(loop.workdir, f"nonfinite_batch_step{step}.npz")
            np.savez(path, **host_batch)
            raise FloatingPointError(f"step {step}: loss is {m['loss']}; batch saved to {path};"
                                     " the last checkpoint holds the last finite state")
        m["tokens_per_s"] = ntok / max(time.perf_counter() - t0, 1e-9)
        if step % loop.log_every == 0 or step == loop.total_steps:
            writer.write(step, m)
        bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m.get('reward_accuracy', float('nan')):.3f}",
                        tok_s=f"{m['tokens_per_s']:.0f}", refresh=False)
        bar.update(1)

    def evaluate(step):
        batches = list(eval_batches)
        if not batches:
            return None
        sums, total = {}, 0.0
        for b in batches:
            m = jax.device_get(eval_fn(state.params, put(b), rng))
            w = float(m.pop("examples"))
            total += w
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + w * float(v)
        out = {k: v / max(total, 1e-9) for k, v in sums.items()}
        writer.write(step, out, prefix="eval")
        return {f"eval/{k}": v for k, v in out.items()}

    try:
        if start == 0:
            evaluate(0)  # the baseline every curve starts from
        for step in range(start + 1, loop.total_steps + 1):
            host_batch = next(train_iter)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, put(host_batch), rng)
            if pending is not None:
                finish(pending)
            pending = (step, metrics, host_batch, _tokens(host_batch), t0)
            at_ckpt = step % loop.checkpoint_every == 0 or step == loop.total_steps
            if at_ckpt or stop["sigterm"]:
                finish(pending)  # only finite states are checkpointed
                pending = None
                ckpt.save(step, state, train_iter.state(), meta, force=True)
            if loop.eval_every and step % loop.eval_every == 0 or step == loop.total_steps:
                ev = evaluate(step)
                if ev and loop.best_metric:
                    ckpt.save_best(step, state, ev, train_iter.state(), meta)
            if on_step is not None:
                on_step(step)
            if stop["sigterm"]:
                break
        if pending is not None:
            finish(pending)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    return state


def place_params(params, model_cfg, mesh, logical_axes=None):
    """Put a host or single-device param tree onto the mesh with its logical shardings."""
    from jaxalign.models.transformer import param_logical_axes
    if logical_axes is None:
        logical_axes = param_logical_axes(model_cfg)
    shardings = shd.tree_shardings(logical_axes, params, mesh)
    return jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x), s), params, shardings)
