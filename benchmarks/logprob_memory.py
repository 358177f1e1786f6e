"""Compiled temp memory of value_and_grad(summed masked log-prob): plain logits vs memory-lean.

Compiles (never runs, never allocates the inputs: `jax.ShapeDtypeStruct`) the gradient w.r.t.
hidden states and the unembedding of `sum(shifted_token_logprobs(...))` for
  plain: logits = hidden @ unembed materialised as [B, T, V], then log-softmax;
  lean:  `shifted_token_logprobs_from_hidden` (chunks of T, rematerialised in the backward),
and prints `memory_analysis().temp_size_in_bytes` of both and their ratio.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/logprob_memory.py [--chunk_size 128]

Defaults: B=4, T=1024, V=131072, D=2048, float32. Compiling both takes a few seconds on CPU.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from jaxalign.losses import logprobs


def plain_logprob_sum(hidden_BxTxD, unembed_DxV, tokens_BxT, completion_mask_BxT):
    logits_BxTxV = jnp.einsum("btd,dv->btv", hidden_BxTxD, unembed_DxV)
    logps, _ = logprobs.shifted_token_logprobs(
        tokens_BxT=tokens_BxT, logits_BxTxV=logits_BxTxV, completion_mask_BxT=completion_mask_BxT)
    return logps.sum()


def lean_logprob_sum(hidden_BxTxD, unembed_DxV, tokens_BxT, completion_mask_BxT, *, chunk_size):
    logps, _ = logprobs.shifted_token_logprobs_from_hidden(
        tokens_BxT=tokens_BxT, hidden_BxTxD=hidden_BxTxD, unembed_DxV=unembed_DxV,
        completion_mask_BxT=completion_mask_BxT, chunk_size=chunk_size)
    return logps.sum()


def memory(fn, *, B, T, V, D, dtype):
    args = (jax.ShapeDtypeStruct((B, T, D), dtype), jax.ShapeDtypeStruct((D, V), dtype),
            jax.ShapeDtypeStruct((B, T), jnp.int32), jax.ShapeDtypeStruct((B, T), jnp.bool_))
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--V", type=int, default=131072)
    parser.add_argument("--D", type=int, default=2048)
    parser.add_argument("--chunk_size", type=int, default=128)
    a = parser.parse_args()
    shape = dict(B=a.B, T=a.T, V=a.V, D=a.D, dtype=jnp.float32)
    print(f"backend={jax.default_backend()} B={a.B} T={a.T} V={a.V} D={a.D} float32 "
          f"chunk_size={a.chunk_size}")
    plain = memory(plain_logprob_sum, **shape)
    lean = memory(lambda *xs: lean_logprob_sum(*xs, chunk_size=a.chunk_size), **shape)
    gib = 2.0**30
    for name, m in (("plain", plain), ("lean", lean)):
        print(f"{name:5s} temp_size_in_bytes={m.temp_size_in_bytes:>14,d} "
              f"({m.temp_size_in_bytes / gib:7.3f} GiB)  "
              f"output={m.output_size_in_bytes / gib:.3f} GiB  "
              f"argument={m.argument_size_in_bytes / gib:.3f} GiB")
    print(f"ratio plain/lean temp = {plain.temp_size_in_bytes / lean.temp_size_in_bytes:.2f}x")


if __name__ == "__main__":
    main()
