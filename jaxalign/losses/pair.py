"""A preference pair's summed log-probs as one value, and the signature pairwise losses share.

    p = PairLogps(l_w, l_l, ref_w, ref_l, n_w, n_l)   # [B] each: `logprobs.sequence_logprobs`
    p.r_w, p.r_l        r(y) = l_theta(y) - l_ref(y), the log-ratios (implicit reward / beta)
    p.h                 r_w - r_l
    p.lbar_w, p.lbar_l  lbar(y) = l_theta(y) / |y|, the length-averaged log-probs (SimPO, ORPO)
    p.rbar_w, p.rbar_l  r(y) / |y|, the length-averaged log-ratios (IPO as TRL computes it)

|y| is clamped to at least 1, so an empty completion averages to 0.

`pair_loss` turns a loss written on the pair, `fn(p, *, hparams) -> (loss_B, metrics)`, into
the keyword function every pairwise loss exposes, so the registry can call any of them alike:

    @pair_loss("dpo.sigmoid", uses=REF)
    def sigmoid(p, *, beta):
        return jax.nn.softplus(-beta * p.h), pair_metrics(beta * p.r_w, beta * p.r_l)

    loss_B, metrics = sigmoid(policy_chosen_logps=..., policy_rejected_logps=...,
                              ref_chosen_logps=..., ref_rejected_logps=...,
                              chosen_lengths=..., rejected_lengths=..., beta=0.1)

Before tracing, the wrapper checks that the arrays the loss uses are given (ValueError naming
the missing ones) and share a shape, casts them to at least float32, and checks the loss's
scale (beta, or the paper's own symbol) is > 0 when it is a Python/NumPy scalar. Arrays the loss
does not use are ignored. A paper symbol that configs still pass as `beta` takes either name,
never both (ValueError naming both).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxalign.losses import _checks

Metrics = dict[str, Float[Array, "B"]]

POLICY = ("policy_chosen_logps", "policy_rejected_logps")
REF = ("ref_chosen_logps", "ref_rejected_logps")
LENGTHS = ("chosen_lengths", "rejected_lengths")
PAIR_ARGS = POLICY + REF + LENGTHS  # the keyword names of PairLogps' fields, in order


class PairLogps(NamedTuple):
    """Summed completion log-probs of a batch of preference pairs, and the completion lengths.

    [B] float arrays; a field the loss does not use may be None (e.g. a reference-free loss's
    reference). A NamedTuple, so it is a pytree (passes through jit and vmap).
    """

    l_w: Float[Array, "B"]  # l_theta(y_w), the policy's summed log-probs of the chosen
    l_l: Float[Array, "B"]  # l_theta(y_l), of the rejected
    ref_w: Float[Array, "B"] | None = None  # l_ref(y_w)
    ref_l: Float[Array, "B"] | None = None  # l_ref(y_l)
    n_w: Float[Array, "B"] | None = None  # |y_w|, completion tokens of the chosen
    n_l: Float[Array, "B"] | None = None  # |y_l|

    # The notation of the papers, as [B] arrays (|y| at least 1: an empty completion averages 0).
    r_w = property(lambda p: p.l_w - p.ref_w, doc="r(y_w) = l_theta(y_w) - l_ref(y_w)")
    r_l = property(lambda p: p.l_l - p.ref_l, doc="r(y_l) = l_theta(y_l) - l_ref(y_l)")
    h = property(lambda p: p.r_w - p.r_l, doc="h = r(y_w) - r(y_l)")
    lbar_w = property(lambda p: p.l_w / _tokens(p.n_w), doc="lbar(y_w) = l_theta(y_w) / |y_w|")
    lbar_l = property(lambda p: p.l_l / _tokens(p.n_l), doc="lbar(y_l) = l_theta(y_l) / |y_l|")
    rbar_w = property(lambda p: p.r_w / _tokens(p.n_w), doc="r(y_w) / |y_w|")
    rbar_l = property(lambda p: p.r_l / _tokens(p.n_l), doc="r(y_l) / |y_l|")


def _tokens(n):
    return jnp.maximum(n, 1.0)  # |y|, at least 1


def pair_metrics(chosen_reward, rejected_reward) -> Metrics:
    """Reward metrics shared by every pairwise loss (stop-gradiented, float32).

    `reward_accuracy` is 1 where chosen > rejected, 0 where below, and 1/2 on an exact tie, so
    a policy equal to its reference (every implicit reward 0) scores chance, not 0 (TRL counts
    ties as wrong).
    """
    c = jax.lax.stop_gradient(_checks.at_least_f32(chosen_reward))
    r = jax.lax.stop_gradient(_checks.at_least_f32(rejected_reward))
    accuracy = jnp.where(c == r, 0.5, (c > r).astype(jnp.float32))
    return {"chosen_reward": c, "rejected_reward": r, "reward_margin": c - r,
            "reward_accuracy": accuracy}


def _scale(name, args, scale, old, from_old):
    """The loss's scale hyperparameter, given as `scale` or (converted) as `old`; checked > 0."""
    if old is None or args[old] is None:
        if args[scale] is None:
            alt = f" (or its old keyword {old})" if old else ""
            raise ValueError(f"{name} needs {scale}{alt}.")
        _checks.check_positive(scale, args[scale])
        return args[scale]
    if args[scale] is not None:
        raise ValueError(f"{name}: give {scale} or its old keyword {old}, not both (got "
                         f"{scale}={args[scale]!r}, {old}={args[old]!r}).")
    _checks.check_positive(old, args[old])
    return from_old(args[old])


def pair_loss(name: str, *, uses: tuple[str, ...] = (), arrays: tuple[str, ...] = (),
              ignores: tuple[str, ...] = (), scale: str = "beta", old: str | None = None,
              from_old: Callable = lambda v: v):
    """Decorator: `fn(p: PairLogps, *, hparams)` -> the keyword loss of the module docstring.

    name: the registry name, used in error messages.
    uses: which of REF, LENGTHS the loss reads besides the policy log-probs (required).
    arrays: `fn`'s other per-example [B] inputs (e.g. win rates): required, same shape, cast.
    ignores: extra keywords accepted and ignored, so a family shares one call.
    scale: `fn`'s scale hyperparameter, checked > 0. `old`: an older keyword for it (given
        instead, it becomes `from_old(value)`; both given is a ValueError).
    """
    used = POLICY + tuple(uses)
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter(k, kw, default=inspect.Parameter.empty if k in POLICY else None)
              for k in PAIR_ARGS + tuple(ignores)]

    def wrap(fn):
        hparams = list(inspect.signature(fn).parameters.values())[1:]
        own = [q.replace(default=None) if q.name in arrays or (q.name == scale and old) else q
               for q in hparams]
        signature = inspect.Signature(
            params + own + ([inspect.Parameter(old, kw, default=None)] if old else []))

        @functools.wraps(fn)
        def loss(**kwargs):
            try:
                bound = signature.bind(**kwargs)
            except TypeError as e:
                raise TypeError(f"{name}: {e}") from None
            bound.apply_defaults()
            args = bound.arguments
            value = _scale(name, args, scale, old, from_old)
            given = {k: args[k] for k in used + tuple(arrays)}
            _checks.check_required(name, **given)
            _checks.check_same_shape(**given)
            given = {k: _checks.at_least_f32(v) for k, v in given.items()}
            p = PairLogps(*(given.get(k) for k in PAIR_ARGS))
            hp = {q.name: given.get(q.name, args[q.name]) for q in hparams}
            return fn(p, **{**hp, scale: value})

        loss.__signature__ = signature
        loss.arrays = tuple(arrays)  # per-example inputs a batch must carry (objectives read)
        return loss

    return wrap
