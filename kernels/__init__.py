"""Pallas kernels for the two hot spots of alignment on accelerators, each beside the pure-JAX
reference it must match (same module, same signature, selected by `impl=`):

- `jaxalign.kernels.logprobs`: per-token log-probs of target tokens from hidden states and the
  unembedding, never holding the [B, T, V] logits (forward and backward);
- `jaxalign.kernels.decode_attention`: one new token per row against the KV cache.

This folder sits at the top of the repository and installs as `jaxalign.kernels` (see
pyproject.toml; in a checkout that is not installed, `jaxalign/__init__.py` maps it), so it
neither shadows nor is shadowed by the unrelated `kernels` package on PyPI. It is the bottom of
jaxalign's import layers: it imports only jax. On CPU the Pallas kernels run in Pallas'
interpreter (tests); compiled, they target TPU (Mosaic) or GPU (Triton).
"""

from ._common import softcap

__all__ = ["softcap"]
