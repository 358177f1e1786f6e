"""Issue #14, class 2: the NaN guard.

A step whose loss, gradients or updated parameters are not finite changes nothing (inside the
compiled, donating step) and stops the run naming the step and the last checkpoint, which with
the state in memory is the last finite state; settings that make every step non-finite are
refused by `make_optimizer`, before anything compiles. The tiny "model" here is one sharded
matrix under a squared error, so the programs compile in a moment.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.sharding import make_mesh
from jaxalign.train.checkpoint import Checkpointer
from jaxalign.train.optim import make_optimizer
from jaxalign.train.step import compile_step, init_state, make_train_step
from jaxalign.train.trainer import LoopConfig, Trainer, run_loop
from tests.train.batches import TINY

D = 64  # w is D x D, sharded (fsdp, model) on a 2 x 2 x 2 mesh; big enough that Orbax
# stores its chunks out of line (small values sit in checksummed OCDBT nodes)
AXES = {"w": ("embed", "mlp")}


def objective(params, batch, rng):
    """Squared error of x @ w, times `scale`, plus sqrt|z w00| (its gradient is NaN where z=0
    while its value stays 0: a finite loss with a non-finite gradient)."""
    w = params["w"]
    err = batch["x"] @ w - batch["y"]
    loss_b = batch["scale"] * jnp.mean(err ** 2, -1) + jnp.sqrt(jnp.abs(batch["z"] * w[0, 0]))
    return loss_b, batch["weight"], {"err": jnp.mean(jnp.abs(err), -1)}


def batch(i: int, fault: str | None = None) -> dict:
    rng = np.random.default_rng(i)
    b = {"x": rng.normal(size=(8, D)).astype(np.float32),
         "y": rng.normal(size=(8, D)).astype(np.float32),
         "scale": np.ones(8, np.float32), "z": np.ones(8, np.float32),
         "weight": np.ones(8, np.float32)}
    if fault == "loss_nan":
        b["scale"][3] = np.nan
    elif fault == "grad_nan":
        b["z"][3] = 0.0
    elif fault == "grad_norm_inf":  # every gradient finite, their squared norm overflows
        b["scale"][:] = 1e30
    elif fault == "update_overflow":  # finite loss and gradients; with lr=1e38 w overflows
        b["scale"][:] = 1e3
    return b


def params0() -> dict:
    return {"w": np.random.default_rng(0).normal(size=(D, D)).astype(np.float32) * 0.3}


class Batches:
    """A resumable iterator of `batch(i)`, `fault` at step `fault_at`."""

    def __init__(self, fault_at: int | None = None, fault: str = "loss_nan"):
        self.i, self.fault_at, self.fault = 0, fault_at, fault

    def __next__(self):
        self.i += 1
        return batch(self.i, self.fault if self.i == self.fault_at else None)

    def state(self):
        return {"i": self.i}

    def restore(self, state):
        self.i = state["i"]


def trainer(workdir, steps: int, checkpoint_every: int = 2, lr: float = 1e-2,
            optimizer: str = "adamw", programs: dict | None = None) -> Trainer:
    loop = LoopConfig(workdir=str(workdir), total_steps=steps, checkpoint_every=checkpoint_every,
                      log_every=1, progress_bar=False, async_checkpoints=False)
    opt = OPTIMIZERS.setdefault((optimizer, lr), make_optimizer(optimizer=optimizer, lr=lr)[0])
    return Trainer(loop, objective=objective, optimizer=opt, params=params0(), model_cfg=TINY,
                   mesh=make_mesh(data=2, fsdp=2, model=2), logical_axes=AXES,
                   programs=PROGRAMS if programs is None else programs)


OPTIMIZERS: dict = {}  # the same optimizer object, so trainings share compiled programs
PROGRAMS: dict = {}


def host(state):
    return jax.tree.map(np.asarray, jax.device_get(state))


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, host(a), host(b))


# ---- settings that make every step non-finite: refused when the optimizer is made ----
SETTINGS = {
    "lr_nan": (dict(lr=float("nan")), "optim.lr"),
    "lr_inf": (dict(lr=float("inf")), "optim.lr"),
    "lr_negative": (dict(lr=-1e-3), "optim.lr"),
    "lr_string": (dict(lr="1e-3"), "optim.lr"),
    "eps_negative": (dict(optimizer="rmsprop", eps=-1e-8), "optim.eps"),
    "eps_zero": (dict(eps=0.0), "optim.eps"),
    "eps_nan": (dict(eps=float("nan")), "optim.eps"),
    "weight_decay_negative": (dict(weight_decay=-0.1), "optim.weight_decay"),
    "grad_clip_nan": (dict(grad_clip=float("nan")), "optim.grad_clip"),
    "grad_clip_inf": (dict(grad_clip=float("inf")), "optim.grad_clip"),
    "grad_clip_negative": (dict(grad_clip=-1.0), "optim.grad_clip"),
    "b1_nan": (dict(b1=float("nan")), "optim.b1"),
    "b1_one": (dict(b1=1.0), "optim.b1"),
    "b2_above_one": (dict(b2=1.5), "optim.b2"),
    "warmup_negative": (dict(warmup_steps=-5), "optim.warmup_steps"),
    "total_steps_float": (dict(decay="cosine", total_steps=10.5), "optim.total_steps"),
}


@pytest.mark.parametrize("case", SETTINGS, ids=list(SETTINGS))
def test_settings_that_make_every_step_nonfinite_are_refused(case):
    kwargs, name = SETTINGS[case]
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        make_optimizer(**kwargs)


# ---- the compiled step: a non-finite step changes nothing, nor do the ones behind it ----
FAULTS = {  # fault: (optimizer, lr)
    "loss_nan": ("adamw", 1e-2),
    "grad_nan": ("adamw", 1e-2),
    "grad_norm_inf": ("adamw", 1e-2),
    "update_overflow": ("sgd", 1e38),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_nonfinite_step_leaves_the_donated_state_unchanged(fault):
    name, lr = FAULTS[fault]
    opt, _ = make_optimizer(optimizer=name, lr=lr)
    mesh = make_mesh(data=2, fsdp=2, model=2)
    sharding = {"w": NamedSharding(mesh, P("fsdp", "model"))}
    state = jax.jit(lambda p: init_state(p, opt))(jax.device_put(params0(), sharding))
    step = compile_step(make_train_step(objective, opt), jax.tree.map(lambda x: x.sharding, state),
                        None, mesh)
    rng = jax.random.key(0)
    before = host(state)
    state, m = step(state, batch(1, fault), rng)  # the input state is donated
    assert float(m["nonfinite"]) == 1.0
    assert int(state.step) == -1  # step 1 failed
    assert_trees_equal(state.params, before.params)
    assert_trees_equal(state.opt_state, before.opt_state)
    state, m = step(state, batch(2), rng)  # dispatched before the failure was read: a no-op
    assert int(state.step) == -1 and float(m["nonfinite"]) == 1.0
    assert_trees_equal(state.params, before.params)


def test_a_finite_step_is_applied():
    opt, _ = make_optimizer(optimizer="adamw", lr=1e-2)
    state = init_state(jax.tree.map(jnp.asarray, params0()), opt)
    new, m = jax.jit(make_train_step(objective, opt))(state, batch(1), jax.random.key(0))
    assert float(m["nonfinite"]) == 0.0 and int(new.step) == 1
    assert not np.array_equal(np.asarray(new.params["w"]), params0()["w"])


# ---- the trainer: stops naming the step and the checkpoint; both hold the last finite state ---
@pytest.mark.parametrize("fault,fault_at,every,last", [
    ("loss_nan", 3, 2, 2),  # step 4 is dispatched before step 3's loss is read back
    ("grad_nan", 4, 1, 3),
], ids=["loss_nan_one_step_behind", "grad_nan_after_a_checkpoint"])
def test_nonfinite_step_stops_with_finite_state_and_checkpoint(tmp_path, fault, fault_at, every,
                                                               last):
    seen = {}
    with trainer(tmp_path, 6, checkpoint_every=every) as t:
        on_step = lambda s: seen.__setitem__(s, host(t.state))  # noqa: E731
        what = "loss is nan" if fault == "loss_nan" else "gradient norm is nan"
        with pytest.raises(FloatingPointError, match=(
                rf"step {fault_at}: {what}.*not applied: the state is still step {fault_at - 1}'s,"
                rf" and the last checkpoint is step {last} \(.*checkpoints/last/{last}\)")):
            run_loop(t, Batches(fault_at, fault), on_step=on_step)
        assert int(t.state.step) == fault_at - 1
        assert_trees_equal(t.state, seen[fault_at - 1])  # the pre-step state, in memory
        restored, data, _ = t.ckpt.restore(jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), t.state))
        assert_trees_equal(restored, seen[last])
        assert data == {"i": last}
    assert (tmp_path / f"nonfinite_batch_step{fault_at}.npz").exists()
    # a restart from that checkpoint (the data fixed) runs to the end, as an uninterrupted run
    with trainer(tmp_path, 6, checkpoint_every=every) as t:
        run_loop(t, Batches())
        resumed = host(t.state)
    with trainer(tmp_path / "clean", 6, checkpoint_every=every) as t:
        run_loop(t, Batches())
        assert_trees_equal(resumed, t.state)


def test_checkpointer_refuses_a_nonfinite_state(tmp_path):
    ckpt = Checkpointer(str(tmp_path), TINY, async_save=False)
    bad = {"params": {"w": np.array([1.0, np.inf], np.float32)}, "step": np.int32(3)}
    with pytest.raises(ValueError, match=r"last/3: refusing to save.*not finite.*params/w"):
        ckpt.save(3, bad)
    assert ckpt.latest_step() is None
    ckpt.close()
