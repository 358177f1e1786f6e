"""Per-token cost of guided decoding: GenARM's fused ARMs and ARGS against the base model alone.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/guided_decoding.py           # ~4-5 min, 2 cores
    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/guided_decoding.py --quick   # seconds (a test)

Every model is a random Llama of the same shape, float32: hidden 512, 8 layers, 8 heads (no
GQA), MLP 1376, vocab 32000 (~51M parameters; `--quick`: hidden 64, 1 layer, vocab 256).
Greedy, batch 8, 32-token prompts, 128 new tokens with no stop id, so every row produces all
its tokens. Rows:
  base               the base model alone (Sampler): the base step
  base + 1 ARM       GenARM: one ARM fused into the same compiled step (Sampler guides)
  base + 2 ARMs      two ARMs (multi-objective GenARM)
  ARGS k=10          a same-size scalar reward model scores the base's top 10 tokens per step
                     (k RM tokens per step, in one candidates call on its KV cache)
  ARM step alone     ARM 1 as a lone policy in the Sampler (with base: the fused ratio's parts)
Per-token time excludes prefill: (time(128 new tokens) - time(1 new token)) / 127, each the best
of `--reps` calls after a warm-up; both run the same compiled programs (`per_token_seconds`).
Printed ratios:
fused(1 ARM) / (base step + ARM step) (fusing should cost no more than the two steps run
apart; target <= 1.10) and ARGS / base.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxalign.models import ModelConfig, param_shapes  # noqa: E402

CONFIGS = {
    "full": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8,
                 intermediate_size=1376, vocab_size=32000),
    "quick": dict(hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                  intermediate_size=128, vocab_size=256),
}


def random_params(shapes, seed: int):
    """Normal(0, 0.02) weights, unit norm scales, from a tree of shapes (no init to compile)."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return np.ones(x.shape, np.float32)
        return 0.02 * rng.standard_normal(x.shape, np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def make_models(name: str):
    """(cfg, params of base, ARM 1, ARM 2, scalar RM): random, distinct seeds."""
    from jaxalign.reward.model import reward_param_shapes

    cfg = ModelConfig(family="llama", max_position_embeddings=2048, **CONFIGS[name])
    lms = (random_params(param_shapes(cfg), seed) for seed in range(3))
    return (cfg, *lms, random_params(reward_param_shapes(cfg), 3))


def methods(cfg, base, arm1, arm2, rm, *, max_len: int, prompt_len: int):
    """name -> (a sampler, its extra call arguments)."""
    from jaxalign.reward.args import ArgsSampler
    from jaxalign.sampling import GuideModel, Sampler

    kw = dict(stop_ids=(), max_len=max_len, buckets=(prompt_len,))
    guide = lambda p: GuideModel(cfg, p, weight=1.0)
    return {
        "base": (Sampler(cfg, base, **kw), {}),
        "base + 1 ARM (fused)": (Sampler(cfg, base, guides=[guide(arm1)], **kw), {}),
        "base + 2 ARMs (fused)": (Sampler(cfg, base, guides=[guide(arm1), guide(arm2)], **kw),
                                  {}),
        "ARGS k=10 (scalar RM)": (ArgsSampler(cfg, base, cfg, rm, **kw), dict(k=10, w=1.0)),
        "ARM step alone": (Sampler(cfg, arm1, **kw), {}),
    }


def per_token_seconds(models, prompt_ids, new: int, reps: int) -> dict:
    """name -> best (time(new tokens) - time(1 token)) / (new - 1) over `reps` rounds.

    The 1-token runs use the same compiled programs: their sampler's max_len leaves each row
    room for one token (a budget, not a shape), so prefill runs and the decode loop exits at
    once. Rows alternate within a round so background load hits them alike.
    """
    P = len(prompt_ids[0])
    plans = [methods(*models, max_len=m, prompt_len=P) for m in (P + 1, P + new)]

    def run(i, name, extra):
        out = plans[i][name][0](prompt_ids=prompt_ids, temperature=0.0, max_new_tokens=new,
                                **extra)
        assert (out.lengths == (1, new)[i]).all()  # no stop id: every row makes every token

    for name, (_, extra) in plans[0].items():  # compile (shared by both) and warm up
        run(0, name, extra), run(1, name, extra)
    best = {name: [np.inf, np.inf] for name in plans[0]}
    for _ in range(reps):
        for name, (_, extra) in plans[0].items():
            for i in (0, 1):
                t = time.perf_counter()
                run(i, name, extra)
                best[name][i] = min(best[name][i], time.perf_counter() - t)
    return {name: (long - short) / (new - 1) for name, (short, long) in best.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, batch 2, 8 new tokens")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    name, batch, prompt_len, new, reps = (("quick", 2, 8, 8, 1) if args.quick
                                          else ("full", 8, 32, 128, args.reps))
    c = CONFIGS[name]
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}; random Llama x4 (base, 2 ARMs, RM), "
          f"hidden {c['hidden_size']}, layers {c['num_layers']}, vocab {c['vocab_size']}, "
          f"float32, greedy, batch {batch}, prompt {prompt_len}, {new} new tokens")
    models = make_models(name)
    prompt_ids = np.random.default_rng(0).integers(2, c["vocab_size"], (batch, prompt_len))
    seconds = per_token_seconds(models, prompt_ids.tolist(), new, reps)
    base = seconds["base"]
    print(f"{'method':>24} {'ms/token':>9} {'tokens/s':>9} {'x base':>7}")
    for method, s in seconds.items():
        print(f"{method:>24} {1e3 * s:9.2f} {batch / s:9.1f} {s / base:7.2f}")
    fused = seconds["base + 1 ARM (fused)"] / (base + seconds["ARM step alone"])
    args_ratio = seconds["ARGS k=10 (scalar RM)"] / base
    print(f"fused(1 ARM) / (base step + ARM step) = {fused:.2f} (target <= 1.10); "
          f"ARGS / base = {args_ratio:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return dict(seconds=seconds, fused_ratio=fused, args_ratio=args_ratio)


if __name__ == "__main__":
    main()
