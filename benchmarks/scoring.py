"""Reward-model scoring throughput: jaxalign (JAX, CPU) vs transformers'
LlamaForSequenceClassification (PyTorch, CPU), same weights, float32, in one process.

The random reward model (bench-100m Llama backbone + score head, pad_token_id 0) is exported
with `save_reward_hf` and loaded by transformers, and the two score the same batch of 32 rows x
256 tokens (random ids, never the pad id, no padding); the scores are checked to agree before
timing.

  jaxalign:      `jax.jit(reward_scores)` on the device-resident batch, timed per call until
                 the result is ready (what `RewardScorer` runs per bucket).
  transformers:  `model(input_ids, attention_mask)` under `torch.no_grad()`, `.logits` read.

Reported: median time per batch after the first call of each (the score check), the two timed
in alternation so that load from other jobs hits both alike; sequences/s, tokens/s and the
jaxalign/transformers ratio (> 1: jaxalign is faster).

    .venv/bin/python benchmarks/scoring.py            # bench-100m, 32 x 256 (~4 min on 2 busy cores)
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

from jaxalign.models.presets import preset  # noqa: E402
from jaxalign.reward import init_reward_params, reward_scores, save_reward_hf  # noqa: E402

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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bench-tiny, 8 x 64, 2 reps")
    parser.add_argument("--config", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
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
    jax_s, torch_s = med["jax"], med["torch"]

    res = dict(config=name, jax_s=jax_s, torch_s=torch_s, jax_first_s=jax_first,
               jax_seq_s=batch / jax_s, torch_seq_s=batch / torch_s,
               jax_tok_s=real / jax_s, torch_tok_s=real / torch_s, ratio=torch_s / jax_s)
    print(f"jaxalign:     {res['jax_seq_s']:9.2f} seq/s {res['jax_tok_s']:11.1f} tok/s  "
          f"({jax_s:.3f} s/batch; compile + first call {jax_first:.1f} s)")
    print(f"transformers: {res['torch_seq_s']:9.2f} seq/s {res['torch_tok_s']:11.1f} tok/s  "
          f"({torch_s:.3f} s/batch)")
    print(f"RATIO config={name} batch={batch} length={length} jaxalign/transformers="
          f"{res['ratio']:.2f}x", flush=True)
    return res


if __name__ == "__main__":
    main()
