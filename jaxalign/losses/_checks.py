"""Argument checks that run before tracing.

Only what is visible without data is checked: static shapes, and hyperparameters given as
Python or NumPy scalars. A traced hyperparameter passes unchecked: XLA on CPU cannot raise a
data-dependent error inside jit.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np


def static_scalar(value) -> float | None:
    """`value` as a float if it is a Python/NumPy scalar, else None (traced or a jax array)."""
    if isinstance(value, (numbers.Real, np.generic)):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    return None


def check_positive(name: str, value) -> None:
    v = static_scalar(value)
    if v is not None and not v > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_in_range(name: str, value, low: float, high: float, *, closed: bool = False) -> None:
    """Checks `low <= value < high` (`<= high` if closed) for a static scalar."""
    v = static_scalar(value)
    if v is not None and not (low <= v <= high if closed else low <= v < high):
        bracket = "]" if closed else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}.")


def check_same_shape(**arrays) -> None:
    """All given (non-None) arrays share one shape."""
    shapes = {k: tuple(np.shape(v)) for k, v in arrays.items() if v is not None}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k}{list(s)}" for k, s in shapes.items())
        raise ValueError(f"Shapes must match, got {listed}.")


def check_rank(name: str, array, rank: int) -> None:
    if np.ndim(array) != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {list(np.shape(array))}.")


def check_required(loss_name: str, **arrays) -> None:
    missing = [k for k, v in arrays.items() if v is None]
    if missing:
        raise ValueError(f"{loss_name} needs {', '.join(missing)}.")


def check_exactly_one(**arrays) -> None:
    given = [k for k, v in arrays.items() if v is not None]
    if len(given) != 1:
        raise ValueError(f"Give exactly one of {', '.join(arrays)}; got {given or 'none'}.")


def at_least_f32(x):
    """`x` as a float array of at least float32 precision (bf16/int -> f32; f64 stays f64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
