"""Greedy sampling throughput: jaxalign's Sampler against transformers `generate`, with ceilings.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/sampling.py            # ~6 min on 2 idle cores
    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/sampling.py --quick    # seconds (a test runs it)

Both sides run the same random Llama weights (made by transformers, loaded with `load_hf`),
float32, greedy, 32-token prompts and 128 new tokens with no stop token (every row produces all
its tokens), at batch 1, 8 and 32, for a tiny config (hidden 64, 2 layers) and a ~100M one
(hidden 768, 12 layers, vocab 32000). tokens/s counts generated tokens over the whole call
(prefill included), best of `--reps` (x5 for tiny) after a warm-up; the two sides alternate so
background load hits both alike. Two ceilings are measured here, not assumed:
  matmul-only: one jitted decode step's matmuls alone (same shapes, per-layer weight buffers),
    looped over the 128 steps in one program: B / (time per step) tokens/s;
  decode %matmul: the decode steps alone against that ceiling, each step timed as the slope
    between a 2-token and a 128-token call (the prompt's prefill and host work excluded);
  roofline (batch 1): bandwidth of a jitted matrix-vector product over a 512 MiB float32
    matrix, divided by the bytes a step must read (every weight but the embedding table, and
    the KV cache of the average context): the best a memory-bound batch-1 step can do.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

CONFIGS = {  # transformers LlamaConfig fields
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=256),
    "100M": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, intermediate_size=2048, vocab_size=32000),
}


def best_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bandwidth(mib: int, reps: int = 10) -> float:
    """Bytes/s of a jitted [1, K] @ [K, N] float32 product over a `mib` MiB matrix."""
    k = 8192
    w = jnp.ones((k, mib * 2**20 // 4 // k), jnp.float32)
    x = jnp.ones((1, k), jnp.float32)
    f = jax.jit(lambda x, w: x @ w)
    f(x, w).block_until_ready()
    return w.size * 4 / best_time(lambda: f(x, w).block_until_ready(), reps)


def matmul_ceiling(c: dict, batch: int, steps: int, reps: int) -> float:
    """tokens/s if a decode step were only its matmuls (same shapes, one buffer per weight)."""
    D, F, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    H = D // c["num_attention_heads"]
    KV = c["num_key_value_heads"] * H
    rng = np.random.default_rng(0)
    w = lambda *s: jnp.asarray(rng.normal(0, 0.02, s).astype(np.float32))
    layers = [dict(q=w(D, D), k=w(D, KV), v=w(D, KV), o=w(D, D), gate=w(D, F), up=w(D, F),
                   down=w(F, D)) for _ in range(L)]
    head = w(D, V)

    def run(layers, head, x):
        def step(_, x):
            for p in layers:
                q, k, v = x @ p["q"], x @ p["k"], x @ p["v"]
                o = q @ p["o"]
                d = (x @ p["gate"] * (x @ p["up"])) @ p["down"]
                x = (o + d) * 1e-3 + (k[:, :1] + v[:, :1]) * 1e-9  # keep every product live
            return x + (x @ head)[:, :D] * 1e-9
        return jax.lax.fori_loop(0, steps, step, x)

    f = jax.jit(run)
    x = jnp.ones((batch, D), jnp.float32)
    f(layers, head, x).block_until_ready()
    return batch * steps / best_time(lambda: f(layers, head, x).block_until_ready(), reps)


def step_bytes(c: dict, context: float) -> float:
    """float32 bytes a batch-1 decode step reads: weights (no embedding) and the KV cache."""
    D, F, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    KV = c["num_key_value_heads"] * D // c["num_attention_heads"]
    per_layer = 2 * D * D + 2 * D * KV + 3 * D * F + 2 * D
    return 4 * (L * per_layer + D + D * V + context * L * 2 * KV)


def bench_config(name: str, batches, prompt_len: int, new: int, reps: int, bw: float | None):
    import torch
    import transformers as T

    from jaxalign.models.hf import load_hf
    from jaxalign.sampling import Sampler

    c = CONFIGS[name]
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(**c, max_position_embeddings=512, bos_token_id=1,
                                          eos_token_id=None, pad_token_id=0)).eval()
    hf.generation_config.eos_token_id = None
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        cfg, params = load_hf(d)
    sampler = Sampler(cfg, params, stop_ids=())
    rows = []
    for B in batches:
        ids = np.random.default_rng(B).integers(2, c["vocab_size"], (B, prompt_len))
        ids_t, mask_t = torch.tensor(ids), torch.ones((B, prompt_len), dtype=torch.long)

        def ours(n=new):
            out = sampler(prompt_ids=ids.tolist(), temperature=0.0, max_new_tokens=n)
            assert (out.lengths == n).all()

        def theirs():
            with torch.no_grad():
                out = hf.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, pad_token_id=0)
            assert out.shape == (B, prompt_len + new)

        ours(), ours(2), theirs()  # compile / warm up
        t_ours = t_theirs = t_two = float("inf")
        for _ in range(reps):  # alternate so background load hits both alike
            t_ours = min(t_ours, best_time(ours, 1))
            t_two = min(t_two, best_time(lambda: ours(2), 1))
            t_theirs = min(t_theirs, best_time(theirs, 1))
        ceiling = matmul_ceiling(c, B, new, max(1, reps))
        # decode steps alone: the slope between 2 and `new` tokens (prefill and host excluded)
        step = max(t_ours - t_two, 1e-9) / (new - 2)
        row = dict(config=name, batch=B, ours=B * new / t_ours, hf=B * new / t_theirs,
                   matmul=ceiling, decode=B / step)
        if B == 1 and bw is not None:
            row["roofline"] = bw / step_bytes(c, prompt_len + new / 2)
        rows.append(row)
        print(fmt(row), flush=True)
    return rows


HEADER = (f"{'config':>6} {'batch':>5} {'ours tok/s':>11} {'hf tok/s':>9} {'ratio':>6} "
          f"{'matmul-only':>11} {'%matmul':>7} {'decode %matmul':>14} {'roofline':>8} "
          f"{'%roof':>6}")


def fmt(r: dict) -> str:
    roof = (f"{r['roofline']:8.1f} {100 * r['ours'] / r['roofline']:5.0f}%" if "roofline" in r
            else f"{'-':>8} {'-':>6}")
    return (f"{r['config']:>6} {r['batch']:5d} {r['ours']:11.1f} {r['hf']:9.1f} "
            f"{r['ours'] / r['hf']:5.2f}x {r['matmul']:11.1f} "
            f"{100 * r['ours'] / r['matmul']:6.0f}% {100 * r['decode'] / r['matmul']:13.0f}% "
            f"{roof}")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny config, batch 1, 16 new tokens")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    if args.quick:
        plan, new, reps, mib = [("tiny", (1,))], 16, 1, 64
    else:
        plan, new, reps, mib = [("tiny", (1, 8, 32)), ("100M", (1, 8, 32))], 128, args.reps, 512
        # tiny calls take milliseconds: more repetitions make their best-of robust to load
    bw = bandwidth(mib)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f} (other processes slow both sides, torch's "
          f"OpenMP most); matvec bandwidth ({mib} MiB float32): {bw / 1e9:.1f} GB/s")
    print(HEADER)
    rows = []
    for name, batches in plan:
        rows += bench_config(name, batches, prompt_len=32, new=new,
                             reps=reps * 5 if name == "tiny" and not args.quick else reps, bw=bw)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
