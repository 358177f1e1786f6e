"""The Pallas kernels against their XLA references, on whatever device JAX sees.

    python benchmarks/kernels.py                 # a GPU or TPU: the issue's shapes, compiled
    JAX_PLATFORMS=cpu python benchmarks/kernels.py --quick   # tiny shapes, Pallas interpreted

Imports only jax and `jaxalign.kernels` (a device image without flax, ml-collections or
tensorflow-datasets runs it from a checkout: `PYTHONPATH=.`). Prints the versions first, then:

1. Fused log-probs, `value_and_grad` of the summed log-probs w.r.t. hidden states and the
   unembedding (B=4, T=1024, V=128256, D=2048, bfloat16 by default): the compiled program's
   temp memory (`memory_analysis()`, nothing allocated for it) and the time per call of
     plain   logits = hidden @ unembed as [B, T, V], then log-softmax (what autodiff gives);
     xla     `chunked_logprobs` (chunks of 128 positions, logits recomputed in the backward);
     pallas  `pallas_logprobs` (tiles of rows x vocabulary, online log-sum-exp);
   with the largest difference of each against `xla` in values and gradients.
2. Decode attention over a KV cache of `--slots` filled slots on the ~100M benchmark model's
   heads (4 KV heads x 3 queries x 64, 12 layers, bfloat16), batch 1, 8 and 32: one call per
   layer per step (12 layers' caches, larger than a GPU's L2 at batch 1), time per step, the
   bandwidth it achieves (cache bytes read / time) and its fraction of the device's copy
   bandwidth measured in the same run (a 1 GiB array copied: 2 GiB moved).

On CPU the Pallas kernels run in Pallas' interpreter: their times say nothing (the table marks
them), the values still check.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.kernels import decode_attention as attention_kernels
from jaxalign.kernels import logprobs as logprob_kernels


def seconds(fn, *args, reps: int) -> float:
    """Median wall seconds of `fn(*args)` (compiled, warmed up, results awaited)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def versions() -> str:
    import jaxlib
    d = jax.devices()[0]
    return (f"python {sys.version.split()[0]}  jax {jax.__version__}  jaxlib {jaxlib.__version__}"
            f"  backend {jax.default_backend()}  device {d.device_kind} x{jax.device_count()}")


# --- 1. log-probs ---------------------------------------------------------------------------

def _plain(hidden, unembed, bias, targets):
    logits = jnp.einsum("btd,dv->btv", hidden, unembed, preferred_element_type=jnp.float32)
    logits = logits + bias.astype(jnp.float32)
    return jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]


def logprob_variants(interpret: bool) -> dict:
    return {
        "plain": _plain,
        "xla": lambda h, w, b, t: logprob_kernels.chunked_logprobs(h, w, b, t),
        "pallas": lambda h, w, b, t: logprob_kernels.pallas_logprobs(h, w, b, t,
                                                                     interpret=interpret),
    }


def bench_logprobs(B: int, T: int, V: int, D: int, dtype, reps: int, interpret: bool) -> list:
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (B, T, D), jnp.float32).astype(dtype)
    unembed = (jax.random.normal(keys[1], (D, V), jnp.float32) * D**-0.5).astype(dtype)
    bias = jnp.zeros((V,), dtype)
    targets = jax.random.randint(keys[2], (B, T), 0, V)
    rows, results = [], {}
    for name, f in logprob_variants(interpret).items():
        loss = lambda h, w, b, t, f=f: f(h, w, b, t).sum()  # noqa: E731
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (hidden, unembed, bias, targets)]
        temp = step.lower(*shapes).compile().memory_analysis().temp_size_in_bytes
        value, grads = step(hidden, unembed, bias, targets)
        results[name] = (np.float64(value), [np.asarray(g, np.float32) for g in grads])
        rows.append(dict(name=name, temp=temp, s=seconds(step, hidden, unembed, bias, targets,
                                                         reps=reps)))
    ref_value, ref_grads = results["xla"]
    for row in rows:
        value, grads = results[row["name"]]
        row["dvalue"] = abs(value - ref_value) / max(abs(ref_value), 1.0)
        row["dgrad"] = max(float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-30))
                           for g, r in zip(grads, ref_grads))
    return rows


# --- 2. decode attention --------------------------------------------------------------------

def copy_bandwidth(reps: int, gib: float) -> float:
    """Bytes moved per second copying a `gib` GiB array (read + write)."""
    x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
    copy = jax.jit(lambda a: a * 1.0 + 0.0)
    return 2 * x.nbytes / seconds(copy, x, reps=reps)


def bench_decode(batch: int, slots: int, layers: int, M: int, E: int, H: int, dtype, reps: int,
                 interpret: bool, impls=("xla", "pallas")) -> list:
    keys = jax.random.split(jax.random.key(batch), 3)
    Q = M * E
    q = jax.random.normal(keys[0], (layers, batch, 1, Q, H), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (layers, batch, M, H, slots), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (layers, batch, M, slots, H), jnp.float32).astype(dtype)
    mask = jnp.ones((batch, 1, 1, slots), bool)  # every slot filled: a full cache
    read = k.nbytes + v.nbytes
    rows, outs = [], {}
    for impl in impls:
        opts = {"interpret": interpret} if impl == "pallas" else {}

        def step(q, k, v, impl=impl, opts=opts):
            return [attention_kernels.decode_attention(q[i], k[i], v[i], mask, impl=impl, **opts)
                    for i in range(layers)]

        f = jax.jit(step)
        outs[impl] = np.asarray(jnp.stack(f(q, k, v)), np.float32)
        s = seconds(f, q, k, v, reps=reps)
        rows.append(dict(impl=impl, batch=batch, s=s, bw=read / s))
    for row in rows:
        row["dmax"] = float(np.max(np.abs(outs[row["impl"]] - outs["xla"])))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes (CPU, seconds)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--slots", type=int, default=8192)
    p.add_argument("--skip", choices=["logprobs", "decode"], default=None)
    a = p.parse_args(argv)
    dtype = jnp.dtype(a.dtype)
    interpret = jax.default_backend() == "cpu"
    print(versions())
    if interpret:
        print("CPU: the Pallas kernels run interpreted; their times are not kernel times")
    if a.quick:
        lp = dict(B=2, T=8, V=300, D=64)
        dec = dict(batches=(2,), slots=256, layers=1)
        a.reps = min(a.reps, 2)
    else:
        lp = dict(B=4, T=1024, V=128256, D=2048)
        dec = dict(batches=(1, 8, 32), slots=a.slots, layers=12)
    flag = " (interpreted)" if interpret else ""
    if a.skip != "logprobs":
        print(f"\nlog-probs value_and_grad  B={lp['B']} T={lp['T']} V={lp['V']} D={lp['D']} "
              f"{a.dtype}")
        rows = bench_logprobs(**lp, dtype=dtype, reps=a.reps, interpret=interpret)
        plain = next(r for r in rows if r["name"] == "plain")
        print(f"{'impl':8s} {'temp MiB':>10s} {'plain/temp':>10s} {'ms':>10s} {'xla/ms':>8s} "
              f"{'d value':>9s} {'d grad':>9s}")
        xla_s = next(r["s"] for r in rows if r["name"] == "xla")
        for r in rows:
            print(f"{r['name']:8s} {r['temp'] / 2**20:10.1f} {plain['temp'] / max(r['temp'], 1):10.1f}"
                  f" {r['s'] * 1e3:10.2f} {xla_s / r['s']:8.2f} {r['dvalue']:9.1e} "
                  f"{r['dgrad']:9.1e}{flag if r['name'] == 'pallas' else ''}")
    if a.skip != "decode":
        copy = copy_bandwidth(a.reps, 0.0625 if a.quick else 1.0)
        print(f"\ndecode attention  {dec['layers']} layers x 4 KV heads x 3 queries x 64, "
              f"{dec['slots']} filled slots, {a.dtype}; copy bandwidth {copy / 1e9:.0f} GB/s")
        print(f"{'impl':8s} {'batch':>5s} {'us/step':>10s} {'GB/s':>8s} {'% copy':>7s} "
              f"{'d max':>9s}")
        for batch in dec["batches"]:
            for r in bench_decode(batch, dec["slots"], dec["layers"], 4, 3, 64, dtype, a.reps,
                                  interpret):
                print(f"{r['impl']:8s} {r['batch']:5d} {r['s'] * 1e6:10.1f} {r['bw'] / 1e9:8.1f} "
                      f"{100 * r['bw'] / copy:6.1f}% {r['dmax']:9.1e}"
                      f"{flag if r['impl'] == 'pallas' else ''}")


if __name__ == "__main__":
    main()
