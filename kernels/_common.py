"""What the kernels share: the soft-cap, the backend a Pallas kernel compiles for, interpret mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp

BACKENDS = ("tpu", "gpu")


def softcap(x, cap: float | None):
    """Gemma-2's soft-capping `cap * tanh(x / cap)` (identity when cap is None)."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def pallas_target(backend: str | None, interpret: bool | None) -> tuple[str, bool]:
    """(backend, interpret) for a Pallas kernel: `backend` "tpu" (Mosaic) or "gpu" (Triton),
    by default the default device's; `interpret` by default True exactly on CPU, where the
    kernel runs in Pallas' interpreter (slow; for tests), with `backend` "tpu" unless given."""
    platform = jax.default_backend()
    if backend is None:
        backend = "gpu" if platform in ("gpu", "cuda", "rocm") else "tpu"
    if backend not in BACKENDS:
        raise ValueError(f"Pallas backend must be one of {BACKENDS}, got {backend!r}")
    if interpret is None:
        interpret = platform == "cpu"
    return backend, interpret
