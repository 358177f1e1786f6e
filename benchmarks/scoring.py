"""Reward-model scoring throughput: jaxalign (JAX, CPU) vs transformers'
LlamaForSequenceClassification (PyTorch, CPU), same weights, float32, in one process.

The random reward model (bench-100m Llama backbone + score head, pad_token_id 0) is exported
with `save_reward_hf` and loaded by transformers, and the two score the same batch of 32 rows x
256 tokens (random ids, never the pad id, no padding); the scores are checked to agree before
timing.

  jaxalign:      `jax.jit(reward_scores)` on the device-resident batch, timed per call until
                 the result is ready (what `RewardScorer` runs per bucket).
  transformers:  `model(input_ids, attention_mask)` under `torch.no_grad()`, `.logits` read.

A second row times the sampler's prompt prefill alone on the same batch: jaxalign's step
(`sampling.loop.LM`: the forward writing every layer's KV cache, the logits of the last position)
against transformers' `LlamaForCausalLM` forward as `generate` runs its prefill
(`use_cache=True, logits_to_keep=1`), same random weights (`save_hf`), last logits checked.

Reported per row: median time per batch after the first call of each (the value check), the two
timed in alternation so that load from other jobs hits both alike; sequences/s, tokens/s,
GFLOP/s (the forward's matmul FLOPs: 2 x tokens x the layers' weights, plus 4 B T^2 Q H per
layer for the attention products, every key counted; the score head and the one-position LM
head are left out) and the jaxalign/transformers ratio (> 1: jaxalign is faster); and the
machine's ceiling for that forward, measured in the same run: the matmul-only program (every
product of the forward at its shapes, one weight buffer per layer, nothing else; see
`matmul_ceiling`) and jaxalign's time as a percentage of it.

    .venv/bin/python benchmarks/scoring.py            # bench-100m, 32 x 256 (~10 min on 2 cores)
    .venv/bin/python benchmarks/scoring.py --quick    # bench-tiny, 8 x 64 (seconds)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jax.numpy as jnp  # noqa: E402

from jaxalign.models import init_params  # noqa: E402
from jaxalign.models.hf import save_hf  # noqa: E402
from jaxalign.models.presets import preset  # noqa: E402
from jaxalign.reward import init_reward_params, reward_scores, save_reward_hf  # noqa: E402
from jaxalign.sampling.loop import LM  # noqa: E402

PAD = 0


def make_batch(vocab: int, batch: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (batch, length)).astype(np.int32)
    return tokens, np.ones((batch, length), bool)


def time_interleaved(calls: dict, reps: int) -> dict:
    """Median seconds per call of each function, timed in alternation, so a change in the
    machine's load during the run affects both sides alike."""
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def forward_flops(cfg, batch: int, length: int) -> float:
    """Matmul FLOPs of a forward over `batch` x `length` tokens (see the module docstring)."""
    D, F, H = cfg.hidden_size, cfg.intermediate_size, cfg.dim_per_head
    Q, M = cfg.num_heads, cfg.num_kv_heads
    per_token = 2 * D * (Q * H) * 2 + 2 * D * (M * H) * 2 + 2 * D * F * 3  # q o, k v, mlp
    attention = 4 * batch * length * length * Q * H
    return cfg.num_layers * (batch * length * per_token + attention)


def matmul_ceiling(cfg, batch: int, length: int, reps: int) -> float:
    """Seconds of the forward's matmuls alone (`forward_flops` of them): per layer the q, k, v,
    o, gate, up and down products of [batch * length, D] activations with that layer's own
    weights, and the two attention products as batched [E * T, H] x [H, T] and
    [E * T, T] x [T, H] per (row, KV head); each product's input depends on the previous
    one's output through one cheap elementwise op, so nothing is skipped or reordered."""
    D, F, H = cfg.hidden_size, cfg.intermediate_size, cfg.dim_per_head
    Q, M, L = cfg.num_heads, cfg.num_kv_heads, cfg.num_layers
    E, N, T = Q // M, batch * length, length
    rng = np.random.default_rng(0)
    w = lambda *shape: jnp.asarray(rng.normal(0, 0.02, shape).astype(np.float32))  # noqa: E731
    layers = [dict(q=w(D, Q * H), k=w(D, M * H), v=w(D, M * H), o=w(Q * H, D), gate=w(D, F),
                   up=w(D, F), down=w(F, D)) for _ in range(L)]

    def run(layers, x_NxD):
        for p in layers:
            q = (x_NxD @ p["q"]).reshape(batch * M, E * T, H)
            k = (x_NxD @ p["k"]).reshape(batch * M, H, T)
            v = (x_NxD @ p["v"]).reshape(batch * M, T, H)
            s = jnp.einsum("nrh,nht->nrt", q, k)
            a = jnp.einsum("nrt,nth->nrh", s * 1e-3, v).reshape(N, Q * H)
            x_NxD = x_NxD + a @ p["o"]
            x_NxD = x_NxD + ((x_NxD @ p["gate"]) * (x_NxD @ p["up"])) @ p["down"]
        return x_NxD

    f = jax.jit(run)
    x = jnp.asarray(rng.normal(0, 1, (N, D)).astype(np.float32))
    f(layers, x).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(layers, x).block_until_ready()
        times.append(time.perf_counter() - t)
    return min(times)


def prefill_calls(cfg, tokens, mask, tmp: str):
    """(jaxalign's prefill, transformers' prefill, max |last logits difference|) on one batch."""
    import torch
    import transformers
    params = init_params(cfg, jax.random.key(1))
    lm = LM(cfg)
    B, T = tokens.shape
    positions = jnp.asarray(np.maximum(np.cumsum(mask, -1) - 1, 0).astype(np.int32))
    step = jax.jit(lambda p, t, pos, m: lm(p, t, pos, m, lm.init_cache(B, T + 1))[0])
    t_dev, m_dev = jax.device_put(tokens), jax.device_put(mask)
    ours = np.asarray(step(params, t_dev, positions, m_dev))
    save_hf(tmp, cfg, params)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    ids, att = torch.tensor(tokens.astype(np.int64)), torch.tensor(mask.astype(np.int64))

    def torch_call():
        with torch.no_grad():  # what generate runs first: the cache filled, one position's logits
            return hf(input_ids=ids, attention_mask=att, use_cache=True,
                      logits_to_keep=1).logits[:, -1].numpy()

    diff = float(np.max(np.abs(ours - torch_call())))
    return (lambda: step(params, t_dev, positions, m_dev).block_until_ready()), torch_call, diff


def report(label: str, med: dict, tokens: int, batch: int, flops: float, ceiling_s: float):
    jax_s, torch_s = med["jax"], med["torch"]
    for side, s in (("jaxalign", jax_s), ("transformers", torch_s)):
        print(f"{label:8s} {side:13s} {batch / s:8.2f} seq/s {tokens / s:10.1f} tok/s "
              f"{flops / s / 1e9:7.1f} GFLOP/s  ({s:.3f} s/batch)")
    print(f"RATIO {label} jaxalign/transformers={torch_s / jax_s:.2f}x  jaxalign at "
          f"{ceiling_s / jax_s:.0%} of the matmul-only ceiling", flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bench-tiny, 8 x 64, 2 reps")
    parser.add_argument("--config", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--skip_prefill", action="store_true")
    a = parser.parse_args(argv)
    name = a.config or ("bench-tiny" if a.quick else "bench-100m")
    batch, length = a.batch or (8 if a.quick else 32), a.length or (64 if a.quick else 256)
    reps = a.reps or (2 if a.quick else 3)

    import torch
    import transformers
    print(f"jax {jax.__version__} ({jax.default_backend()}, {os.cpu_count()} cpus) | torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads) | transformers "
          f"{transformers.__version__}", flush=True)
    cfg = preset(name).replace(pad_token_id=PAD)
    params = init_reward_params(cfg, jax.random.key(0))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    tokens, mask = make_batch(cfg.vocab_size, batch, length)
    real = int(mask.sum())

    fn = jax.jit(lambda p, t, m: reward_scores(cfg, p, t, m))
    t_dev, m_dev = jax.device_put(tokens), jax.device_put(mask)
    t = time.perf_counter()
    ours = np.asarray(fn(params, t_dev, m_dev))
    jax_first = time.perf_counter() - t

    with tempfile.TemporaryDirectory(prefix="scoring_") as tmp:
        save_reward_hf(tmp, cfg, params)
        hf = transformers.LlamaForSequenceClassification.from_pretrained(
            tmp, dtype=torch.float32).eval()
    ids, att = torch.tensor(tokens.astype(np.int64)), torch.tensor(mask.astype(np.int64))

    def torch_call():
        with torch.no_grad():
            return hf(input_ids=ids, attention_mask=att).logits[:, 0].numpy()

    theirs = torch_call()
    diff = float(np.max(np.abs(ours - theirs)))
    print(f"[{name}] {n_params / 1e6:.1f}M params, batch {batch} x {length} ({real} "
          f"tokens); same-scores check: max |jax - torch| = {diff:.2e}", flush=True)
    if not diff <= 1e-3 * max(1.0, float(np.abs(theirs).max())):
        raise RuntimeError(f"jaxalign and transformers scores disagree (max diff {diff})")
    med = time_interleaved({"jax": lambda: fn(params, t_dev, m_dev).block_until_ready(),
                            "torch": torch_call}, reps)
    flops = forward_flops(cfg, batch, length)
    ceiling_s = matmul_ceiling(cfg, batch, length, reps)
    print(f"forward: {flops / 1e12:.3f} TFLOP; matmul-only ceiling {ceiling_s:.3f} s "
          f"({flops / ceiling_s / 1e9:.1f} GFLOP/s); compile + first jaxalign call "
          f"{jax_first:.1f} s")
    report("scoring", med, real, batch, flops, ceiling_s)
    jax_s, torch_s = med["jax"], med["torch"]
    res = dict(config=name, jax_s=jax_s, torch_s=torch_s, jax_first_s=jax_first,
               jax_seq_s=batch / jax_s, torch_seq_s=batch / torch_s,
               jax_tok_s=real / jax_s, torch_tok_s=real / torch_s, ratio=torch_s / jax_s,
               flops=flops, ceiling_s=ceiling_s, ceiling_fraction=ceiling_s / jax_s)
    if not a.skip_prefill:
        with tempfile.TemporaryDirectory(prefix="prefill_") as tmp:
            ours, theirs, diff = prefill_calls(cfg, tokens, mask, tmp)
        print(f"prefill same-logits check: max |jax - torch| = {diff:.2e}")
        if not diff <= 1e-3:
            raise RuntimeError(f"jaxalign and transformers prefill logits disagree ({diff})")
        med = time_interleaved({"jax": ours, "torch": theirs}, reps)
        report("prefill", med, real, batch, flops, ceiling_s)
        res.update(prefill_jax_s=med["jax"], prefill_torch_s=med["torch"],
                   prefill_ratio=med["torch"] / med["jax"],
                   prefill_ceiling_fraction=ceiling_s / med["jax"])
    return res


if __name__ == "__main__":
    main()
