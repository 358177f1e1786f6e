"""The pure train step: (state, batch, rng) -> (state, metrics), with gradient accumulation.

An *objective* is `objective(params, batch, rng) -> (loss_B, weight_B, metrics)`: per-example
losses, per-example weights (0 for padding rows and skipped examples) and a dict of per-example
metrics. Every batch carries `weight` [B] (1 for a real row, 0 for padding); the step minimises
`sum(weight_B * loss_B) / sum(batch["weight"])` over the whole batch; with
`micro_batches = M` the batch is cut into M slices whose gradients are summed in a `lax.scan`,
each already divided by the *global* weight, so 1 x 8 and 8 x 1 give the same update up to the
order of float additions. Frozen models (the DPO reference) are closed over by the objective or
passed in the batch as precomputed log-probs: they never enter `grad`.

A step whose loss, gradients or updated parameters are not all finite changes nothing: the
program selects the old params and optimizer state (so the state is never non-finite, with
donation too) and reports `metrics["nonfinite"] = 1`. It also sets `step` to `-k` (k: the
failed step's number), and a state with a negative step is left as it is by every later step,
so the steps a caller dispatched before reading the failure back change nothing either (the
`Trainer` numbers it `k - 1` again when it reads the failure).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

Objective = Callable[[Any, dict, jax.Array], tuple[jax.Array, jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # [] int32: updates applied; -k after step k was not finite (module doc)
    params: Any
    opt_state: Any


def init_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def _all_finite(tree) -> jax.Array:
    """[] bool: every float of `tree` is finite (one reduction)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


def _split(batch: dict, m: int) -> dict:
    def cut(x):
        if x.shape[0] % m:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by micro_batches={m}")
        return x.reshape(m, x.shape[0] // m, *x.shape[1:])
    return jax.tree.map(cut, batch)


def make_train_step(objective: Objective, optimizer: optax.GradientTransformation,
                    micro_batches: int = 1):
    """The un-jitted step; `compile_step` jits it with shardings and donation."""

    def step_fn(state: TrainState, batch: dict, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        total_w = jnp.maximum(jnp.sum(batch["weight"]), 1e-9)

        def micro(grads_acc, xs):
            mb, k = xs

            def scaled_loss(p):
                loss_b, w_b, metrics = objective(p, mb, jax.random.fold_in(rng, k))
                return jnp.sum(w_b * loss_b) / total_w, (w_b, metrics)

            (loss, (w_b, metrics)), grads = jax.value_and_grad(scaled_loss, has_aux=True)(
                state.params)
            sums = {name: jnp.sum(w_b * v) for name, v in metrics.items()}
            sums["loss"] = loss * total_w
            return jax.tree.map(jnp.add, grads_acc, grads), (sums, jnp.sum(w_b))

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        mbs = _split(batch, micro_batches)
        grads, (sums, ws) = jax.lax.scan(micro, zeros, (mbs, jnp.arange(micro_batches)))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {k: jnp.sum(v) / total_w for k, v in sums.items()}
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["examples"] = jnp.sum(ws)
        # the NaN guard: a non-finite gradient shows in its norm; the new params are checked
        # too (an update can overflow); a state already failed (step < 0) stays as it is
        ok = ((state.step >= 0) & jnp.isfinite(metrics["loss"])
              & jnp.isfinite(metrics["grad_norm"]) & _all_finite(params))
        metrics["nonfinite"] = (~ok).astype(jnp.float32)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        step = jnp.where(ok, state.step + 1, jnp.where(state.step >= 0, -state.step - 1,
                                                         state.step))
        return TrainState(step, jax.tree.map(keep, params, state.params),
                          jax.tree.map(keep, opt_state, state.opt_state)), metrics

    return step_fn


def compile_step(step_fn, state_shardings, batch_shardings, mesh=None):
    """jit with explicit shardings; the state is donated (updated in place)."""
    replicated = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
                  if mesh is not None else None)
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings, replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def eval_metrics(objective: Objective, params, batch: dict, rng: jax.Array) -> dict:
    """Weighted means of loss and metrics on one batch, no update."""
    loss_b, w_b, metrics = objective(params, batch, rng)
    total = jnp.maximum(jnp.sum(w_b), 1e-9)
    out = {k: jnp.sum(w_b * v) / total for k, v in metrics.items()}
    out["loss"] = jnp.sum(w_b * loss_b) / total
    out["examples"] = jnp.sum(w_b)
    return out
