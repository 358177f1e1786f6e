"""A tiny DPO run used by the resume tests: `python -m tests.train.run_tiny WORKDIR STEPS [NAN_AT]`.

Writes WORKDIR/final_params.npz when it reaches STEPS. With KILL_AT=k in the environment the
process SIGKILLs itself right after step k was dispatched (an asynchronous checkpoint may be
half-written at that moment, which is the point).
"""

import os
import signal
import sys

if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

from jaxalign.models import init_params
from jaxalign.objectives import preference_objective
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, train
from tests.train.batches import TINY, preference_batch


class SyntheticIterator:
    """Deterministic batches; its state is the number of batches already produced."""

    def __init__(self, nan_at: int | None = None):
        self.i, self.nan_at = 0, nan_at

    def __next__(self):
        self.i += 1
        batch = preference_batch(self.i)
        if self.nan_at is not None and self.i == self.nan_at:
            batch["weight"] = batch["weight"] * np.float32("nan")
        return batch

    def state(self):
        return {"i": self.i}

    def restore(self, state):
        self.i = state["i"]


def _kill_at(step, kill_at):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def run(workdir, steps, nan_at=None, checkpoint_every=2, mesh=None, micro_batches=1,
        kill_at=None):
    params = init_params(TINY, jax.random.key(0))
    opt, _ = make_optimizer(optimizer="rmsprop", lr=1e-3, warmup_steps=2)
    objective = preference_objective(TINY, loss="dpo.sigmoid", loss_kwargs={"beta": 0.1},
                                     ref_params=params)
    loop = LoopConfig(workdir=workdir, total_steps=steps, checkpoint_every=checkpoint_every,
                      log_every=1, progress_bar=False, micro_batches=micro_batches)
    state = train(loop, objective=objective, optimizer=opt, params=params, model_cfg=TINY,
                  train_iter=SyntheticIterator(nan_at), eval_batches=[preference_batch(999)],
                  mesh=mesh, on_step=lambda step: _kill_at(step, kill_at))
    return state


if __name__ == "__main__":
    workdir, steps = sys.argv[1], int(sys.argv[2])
    nan_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    kill_at = int(os.environ["KILL_AT"]) if "KILL_AT" in os.environ else None
    state = run(workdir, steps, nan_at, kill_at=kill_at)
    if int(state.step) == steps:
        flat = {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
        np.savez(os.path.join(workdir, "final_params.npz"), **flat)
