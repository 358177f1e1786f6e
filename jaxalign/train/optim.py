"""Optimizers and learning-rate schedules from a config, with the papers' choices.

    optimizer: "rmsprop" (DPO, SPPO: torch.optim.RMSprop semantics) | "adamw" | "sgd"
    lr, warmup_steps, decay: "constant" | "linear" | "cosine", total_steps, grad_clip,
    weight_decay, b1, b2, eps

Every number is checked when the optimizer is made, before anything compiles: a setting that
would make every update non-finite or meaningless (a NaN or infinite learning rate, a negative
one, eps <= 0, b1 or b2 outside [0, 1), a negative weight decay, a non-finite clipping norm) is
an error naming `optim.<setting>`.
"""

from __future__ import annotations

import math
import numbers

import optax

_DEFAULTS = dict(optimizer="adamw", lr=1e-5, warmup_steps=0, decay="constant", total_steps=0,
                 grad_clip=0.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8)


# every float setting: (what is valid, the test of a finite number)
_VALID = {
    "lr": (">= 0", lambda v: v >= 0),
    "eps": ("> 0 (0 divides by zero where a gradient is zero)", lambda v: v > 0),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "grad_clip": (">= 0 (0: no clipping)", lambda v: v >= 0),
    "b1": ("in [0, 1)", lambda v: 0 <= v < 1),
    "b2": ("in [0, 1)", lambda v: 0 <= v < 1),
}


def _check(name: str, v) -> None:
    """An error naming `optim.<name>` unless `v` is a valid value of that setting."""
    if name in ("warmup_steps", "total_steps"):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
            raise ValueError(f"optim.{name} must be an integer >= 0, got {v!r}")
        return
    want, test = _VALID[name]
    if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            and test(v)):
        raise ValueError(f"optim.{name} must be a finite number {want}, got {v!r}")


def make_schedule(lr: float, warmup_steps: int, decay: str, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then constant, linear to 0, or cosine to 0 at total_steps."""
    for name, v in (("lr", lr), ("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        _check(name, v)
    if decay not in ("constant", "linear", "cosine"):
        raise ValueError(f"optim.decay: expected constant/linear/cosine, got {decay!r}")
    if decay != "constant" and total_steps <= warmup_steps:
        raise ValueError(f"optim.total_steps={total_steps} must exceed warmup_steps="
                         f"{warmup_steps} for {decay!r} decay")
    warm = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
    rest = total_steps - warmup_steps
    after = {"constant": optax.constant_schedule(lr),
             "linear": optax.linear_schedule(lr, 0.0, max(rest, 1)),
             "cosine": optax.cosine_decay_schedule(lr, max(rest, 1))}[decay]
    if warmup_steps == 0:
        return after
    return optax.join_schedules([warm, after], [warmup_steps])


def make_optimizer(**kw) -> tuple[optax.GradientTransformation, optax.Schedule]:
    unknown = set(kw) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"optim: unknown keys {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    c = {**_DEFAULTS, **kw}
    for name in _VALID:
        _check(name, c[name])
    schedule = make_schedule(c["lr"], c["warmup_steps"], c["decay"], c["total_steps"])
    if c["optimizer"] == "rmsprop":
        # torch.optim.RMSprop defaults: alpha=0.99, eps added outside the square root.
        opt = optax.rmsprop(schedule, decay=0.99, eps=c["eps"], eps_in_sqrt=False)
    elif c["optimizer"] == "adamw":
        opt = optax.adamw(schedule, b1=c["b1"], b2=c["b2"], eps=c["eps"],
                          weight_decay=c["weight_decay"])
    elif c["optimizer"] == "sgd":
        opt = optax.sgd(schedule)
    else:
        raise ValueError(f"optim.optimizer: expected rmsprop/adamw/sgd, got {c['optimizer']!r}")
    if c["grad_clip"] > 0:
        opt = optax.chain(optax.clip_by_global_norm(c["grad_clip"]), opt)
    return opt, schedule
