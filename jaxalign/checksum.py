"""Checksums of array trees, computed where the arrays live, exact on any sharding.

    sums = leaf_checksums(state)       # {"params/layers/attn/q": "0f3a...", ...}
    tree_fingerprint(ref_params)       # one hex string for the whole tree

Each leaf's checksum is two 32-bit sums of its bits: the plain sum and a position-weighted sum
(`sum(bits * (2 i + 1))`), both wrapping mod 2**32. Integer sums are associative, so the result
is the same on one device or sharded over a pod, and only two numbers per leaf leave the devices.
A flipped bit, swapped values or a truncated tensor change it; it is a check against damage and
mix-ups (a checkpoint's bytes, the weights a cached table was computed with), not a
cryptographic hash. Host arrays (numpy) give the same checksum as the device arrays they become.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _bits(x: jax.Array) -> jax.Array:
    """The leaf's bits as uint32, in its own shape (64-bit leaves: a trailing axis of 2 words).
    Never reshaped: a flat view of a leaf sharded on an inner axis would gather it whole."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, _UINT[size]).astype(jnp.uint32)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """Each element's row-major position (mod 2**32), built from iotas in the array's shape."""
    i, stride = jnp.zeros(shape, jnp.uint32), 1
    for d in reversed(range(len(shape))):
        i = i + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2**32)
        stride *= shape[d]
    return i


@jax.jit
def _sums(leaves: list) -> jax.Array:
    """[n_leaves, 2] uint32: (sum of bits, position-weighted sum of bits) of each leaf."""
    out = []
    for x in leaves:
        b = _bits(x)
        w = _flat_index(b.shape) * jnp.uint32(2) + jnp.uint32(1)
        out.append(jnp.stack([b.sum(dtype=jnp.uint32), (b * w).sum(dtype=jnp.uint32)]))
    return jnp.stack(out) if out else jnp.zeros((0, 2), jnp.uint32)


def leaf_path(path) -> str:
    """"params/layers/attn/q": a key path spelled alike for dicts, dataclasses and sequences."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def leaf_checksums(tree) -> dict[str, str]:
    """{leaf path: "<dtype><shape>:<sum>:<weighted sum>"} of every array leaf of `tree`."""
    flat = [(leaf_path(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
            if hasattr(x, "dtype")]
    sums = np.asarray(jax.device_get(_sums([jnp.asarray(x) for _, x in flat])))
    return {name: f"{x.dtype}{list(np.shape(x))}:{s[0]:08x}:{s[1]:08x}"
            for (name, x), s in zip(flat, sums)}


def tree_fingerprint(tree) -> str:
    """A sha256 hex digest of `leaf_checksums(tree)`: equal trees, equal fingerprints."""
    return data_fingerprint(leaf_checksums(tree))


def data_fingerprint(obj) -> str:
    """A sha256 hex digest of a JSON-able value (sorted keys): settings, token id lists."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"),
                                     default=_json_default).encode()).hexdigest()


def _json_default(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot fingerprint a {type(x).__name__}")
