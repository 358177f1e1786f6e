"""Parameter trees addressed by path, for code that maps or picks leaves by name.

    flat = flatten_paths(params)     # {("layers", "attn", "q", "kernel"): leaf, ...}
    params = unflatten_paths(flat)   # the nested dicts again

HF weight mapping (`hf.py`) and LoRA (`jaxalign.train.lora`) both work on these flat dicts.
"""

from __future__ import annotations

import jax


def key_name(k) -> str:
    """A key path entry as a string: a dict key, a dataclass field name or a sequence index."""
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def flatten_paths(tree, is_leaf=None) -> dict[tuple[str, ...], object]:
    """{path of key names: leaf}; `is_leaf` as in `jax.tree_util` (e.g. for trees of
    logical-axis tuples: `lambda x: isinstance(x, tuple)`)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {tuple(key_name(k) for k in path): leaf for path, leaf in leaves}


def unflatten_paths(flat: dict) -> dict:
    """Nested dicts from {path: leaf} (the inverse of `flatten_paths` for trees of dicts)."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out
