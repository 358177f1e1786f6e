"""SPPO's preference step, K candidates per prompt: jaxalign's batched scoring against
transformers' reward-model forward at batch size 1 (as the official SPPO pipeline ranks with
PairRM, one candidate at a time) and batched; CPU, float32, same weights, in one process.

The random reward model (bench-100m Llama backbone + score head, pad_token_id 0) is exported with
`save_reward_hf` and loaded as transformers' LlamaForSequenceClassification. N prompts of
`--prompt_len` random words and K completions each of `--completion_len - 1` words (the EOS
makes `--completion_len` tokens), word-level tokenizer of the model's vocabulary
(`dpo_step.make_tokenizer`), so every candidate is exactly prompt_len + completion_len tokens
(no padding on either side). Every side goes from TEXT to the N x K x K Bradley-Terry matrix
P[n, i, j] = sigma(s_i - s_j) (P_ii = 1/2), tokenization included:

  jaxalign      `ScorePreferenceModel(RewardScorer(..., mesh=make_mesh(data=-1),
                batch_size=--batch))(prompts, samples)`: Encoder, length buckets, batches of
                --batch rows sharded over the mesh, every batch dispatched before one is read.
  (b) bs1       transformers, one candidate per call: `tok(prompt + completion + eos)`,
                `model(...).logits` under torch.no_grad(), then the matrix in torch.
  (c) prompt    the same with the K candidates of one prompt per call (K rows).
      batch     the same with --batch rows per call (candidates in prompt order).

The token ids of both sides are checked equal and the matrices to agree (max |P_jax - P_torch|
< 1e-3 for every transformers variant) before timing. Reported: seconds per preference step
(median of --reps after the checked first call), candidates scored per second and the ratios
jaxalign / (b), jaxalign / (c) (> 1: jaxalign faster); the machine's ceiling for this forward:
the JAX float32 matmul peak (`dpo_step.jax_matmul_peak`, n^3, best of before and after) over
the forward's FLOPs per candidate, 2 x N x T + 2 x 2 x L x T^2 x d (N = params less the
embedding table, T = tokens, full T^2 attention as dpo_step.py counts it).

One method after the other, jaxalign first (`--interleave` alternates them per repetition as
scoring.py does; dpo_step.py found that interleaving slows torch: its OpenMP workers compete
with XLA's thread pool). Run it on a quiet machine: other jobs on the cores change the numbers.

    .venv/bin/python benchmarks/preference_scoring.py           # bench-100m, N=32, K=5, 64 + 192
        # tokens, batch 32 (160 candidates per step; minutes on 2 idle cores)
    .venv/bin/python benchmarks/preference_scoring.py --quick   # bench-tiny, N=4, 16 + 48 tokens
        # (seconds; tests/benchmarks/test_preference_scoring_quick.py runs it with N=2)

Results (candidates/s; ratios jaxalign / transformers; ceiling: see above):

| config | N x K, T | jaxalign | (b) bs=1 | (c) bs=K | (c) bs=32 | /(b) | /(c)K | /(c)32 | ceil |
|---|---|---|---|---|---|---|---|---|---|
| bench-100m (N=8, batch 8, 1 rep)** | 8 x 5, 64 + 192 | 1.39 | 1.26 | 1.36 | 1.39 (bs=8) | 1.10x | 1.02x | 1.00x | 1.71 (81%) |
| bench-tiny (--quick)* | 4 x 5, 16 + 48 | 283 | 17.9 | 41.0 | 66.3 | 15.8x | 6.90x | 4.27x | 2195 |

**2026-12-05, 2-core CPU VM, otherwise idle (`--prompts 8 --batch 8 --reps 1`: the default
N=32 with 3 repetitions did not finish in 30 min here; the matmul peak measured 70 GFLOP/s
in that run). Matrices agree to 6.6e-07. On CPU a 256-token forward is compute-bound at any
batch size, so batching gains little here; the official pipeline's batch-size-1 ranking costs
most on accelerators, where one sequence leaves the chip idle (not measured: no GPU session).
*2 cores under load 5 from other jobs (torch's 2 OpenMP threads suffer most from that): it shows
the output, it is not a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.dpo_step import PAD, jax_matmul_peak, make_tokenizer, word  # noqa: E402
from benchmarks.scoring import time_interleaved  # noqa: E402
from jaxalign.models.presets import preset  # noqa: E402
from jaxalign.reward import (RewardScorer, ScorePreferenceModel, init_reward_params,  # noqa: E402
                             save_reward_hf)
from jaxalign.sharding import make_mesh  # noqa: E402

SIZES = {
    "full": dict(config="bench-100m", prompts=32, prompt_len=64, completion_len=192, reps=3,
                 matmul=2048),
    "quick": dict(config="bench-tiny", prompts=4, prompt_len=16, completion_len=48, reps=2,
                  matmul=256),
}
MATRIX_TOL = 1e-3


def make_texts(vocab: int, n: int, k: int, prompt_len: int, completion_len: int, seed: int = 0):
    """N prompts of prompt_len words; K completions each of completion_len - 1 words (+ EOS)."""
    rng = np.random.default_rng(seed)
    text = lambda m: " ".join(word(int(i)) for i in rng.integers(3, vocab, m))  # noqa: E731
    prompts = [text(prompt_len) for _ in range(n)]
    samples = [[" " + text(completion_len - 1) for _ in range(k)] for _ in range(n)]
    return prompts, samples


def forward_flops(cfg, params, tokens: int) -> float:
    """FLOPs of one reward-model forward over `tokens` tokens (see the module docstring)."""
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    n -= int(np.prod(params["model"]["embed"]["embedding"].shape))
    return 2 * n * tokens + 2 * 2 * cfg.num_layers * tokens**2 * cfg.hidden_size


def torch_preferences(hf, tok, texts: list[str], n: int, k: int, rows: int):
    """transformers from text: `rows` candidates per forward, then the BT matrix [N, K, K]."""
    import torch
    with torch.no_grad():
        scores = []
        for i in range(0, len(texts), rows):
            enc = tok(texts[i:i + rows], return_tensors="pt", padding=True)
            scores.append(hf(input_ids=enc["input_ids"],
                             attention_mask=enc["attention_mask"]).logits[:, 0])
        s = torch.cat(scores).view(n, k)
        P = torch.sigmoid(s[:, :, None] - s[:, None, :])  # SPPO: P(y_i > y_j) = sigma(s_i - s_j)
        P.diagonal(dim1=1, dim2=2).fill_(0.5)
        return P.numpy(), s.numpy()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="bench-tiny, N=4, 16 + 48 tokens")
    ap.add_argument("--config", default=None, help="model preset (bench-100m / bench-tiny)")
    ap.add_argument("--prompts", type=int, default=None, help="N prompts (32)")
    ap.add_argument("--samples", type=int, default=5, help="K candidates per prompt (5)")
    ap.add_argument("--prompt_len", type=int, default=None, help="prompt tokens (64)")
    ap.add_argument("--completion_len", type=int, default=None,
                    help="completion tokens, EOS included (192)")
    ap.add_argument("--batch", type=int, default=32,
                    help="rows per jaxalign batch and per transformers batched call (32)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (3)")
    ap.add_argument("--matmul", type=int, default=None, help="matmul peak size n (2048)")
    ap.add_argument("--interleave", action="store_true",
                    help="alternate the methods per repetition (scoring.py's way)")
    a = ap.parse_args(argv)
    z = dict(SIZES["quick" if a.quick else "full"])
    z.update({key: v for key, v in vars(a).items() if key in z and v is not None})
    N, K, B = z["prompts"], a.samples, a.batch
    T = z["prompt_len"] + z["completion_len"]
    for flag, v, least in (("--prompts", N, 1), ("--samples", K, 2), ("--batch", B, 1),
                           ("--prompt_len", z["prompt_len"], 1),
                           ("--completion_len", z["completion_len"], 1), ("--reps", z["reps"], 1)):
        if v < least:
            raise ValueError(f"{flag} must be >= {least}, got {v}")

    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    print(f"jax {jax.__version__} ({jax.default_backend()}, {len(jax.devices())} devices, "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}) | torch {torch.__version__} "
          f"({torch.get_num_threads()} threads) | transformers {transformers.__version__}",
          flush=True)
    peak = jax_matmul_peak(z["matmul"], 3)
    cfg = preset(z["config"]).replace(pad_token_id=PAD)
    params = jax.jit(init_reward_params, static_argnums=0)(cfg, jax.random.key(0))
    tok = make_tokenizer(cfg.vocab_size)
    prompts, samples = make_texts(cfg.vocab_size, N, K, z["prompt_len"], z["completion_len"])
    texts = [p + c + tok.eos_token for p, s in zip(prompts, samples) for c in s]

    scorer = RewardScorer(cfg, params, tok, mesh=make_mesh(data=-1), batch_size=B,
                          max_length=T, max_prompt_length=z["prompt_len"])
    prefs = ScorePreferenceModel(scorer)
    ids = [scorer.encode(p, c) for p, s in zip(prompts, samples) for c in s]
    if ids != tok(texts)["input_ids"] or {len(x) for x in ids} != {T}:
        raise RuntimeError(f"jaxalign and transformers tokenize the candidates differently "
                           f"(or not into {T} tokens each)")

    with tempfile.TemporaryDirectory(prefix="preference_scoring_") as tmp:
        save_reward_hf(tmp, cfg, params)
        hf = transformers.LlamaForSequenceClassification.from_pretrained(
            tmp, dtype=torch.float32).eval()
    rows = {"bs1": 1, "prompt": K, "batch": B}
    calls = {"jaxalign": lambda: prefs(prompts, samples)}
    calls.update({name: (lambda r=r: torch_preferences(hf, tok, texts, N, K, r)[0])
                  for name, r in rows.items()})

    P_jax = calls["jaxalign"]()  # compiles the bucket; the checked first call
    s_jax = prefs.scores(prompts, samples)
    if P_jax.shape != (N, K, K):
        raise RuntimeError(f"jaxalign's preference matrix is {P_jax.shape}, not {(N, K, K)}")
    diffs = {}
    for name, r in rows.items():
        P_torch, s_torch = torch_preferences(hf, tok, texts, N, K, r)
        diffs[name] = float(np.max(np.abs(P_jax - P_torch)))
        if not diffs[name] < MATRIX_TOL:
            raise RuntimeError(
                f"jaxalign and transformers ({name}) preference matrices disagree: max diff "
                f"{diffs[name]:.2e} >= {MATRIX_TOL} (scores {np.max(np.abs(s_jax - s_torch)):.2e})")
    spread = float(np.max(s_jax.max(1) - s_jax.min(1)))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f"[{z['config']}] {n_params / 1e6:.1f}M params, N={N} prompts x K={K} candidates x "
          f"{T} tokens ({z['prompt_len']} + {z['completion_len']}), batch {B}, "
          f"{len(jax.devices())}-device mesh; same-matrix check: max |P_jax - P_torch| = "
          + ", ".join(f"{d:.2e} ({n})" for n, d in diffs.items())
          + f" (widest score spread in a prompt {spread:.2f})", flush=True)

    if a.interleave:
        sec = time_interleaved(calls, z["reps"])
    else:
        sec = {name: time_interleaved({name: fn}, z["reps"])[name] for name, fn in calls.items()}
    peak = max(peak, jax_matmul_peak(z["matmul"], 3))
    flops = forward_flops(cfg, params, T)
    cand_s = {name: N * K / s for name, s in sec.items()}
    ratios = {name: cand_s["jaxalign"] / cand_s[name] for name in rows}
    ceiling = peak / flops

    labels = {"jaxalign": "jaxalign (a)", "bs1": "transformers bs=1 (b)",
              "prompt": f"transformers bs={K} (c)", "batch": f"transformers bs={B} (c)"}
    for name in calls:
        print(f"{labels[name]:<24} {cand_s[name]:10.2f} candidates/s  ({sec[name]:.3f} s per "
              f"{N} x {K} matrix)" + ("" if name == "jaxalign" else
                                      f"  jaxalign/this = {ratios[name]:.2f}x"))
    print(f"matmul-only ceiling:     {ceiling:10.2f} candidates/s  (JAX float32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s at {z['matmul']}^3 / {flops / 1e9:.3f} GFLOP per "
          f"candidate); jaxalign at {cand_s['jaxalign'] / ceiling:.1%}")
    print(f"RATIO config={z['config']} N={N} K={K} T={T} jaxalign/bs1={ratios['bs1']:.3f} "
          f"jaxalign/bs{K}={ratios['prompt']:.3f} jaxalign/bs{B}={ratios['batch']:.3f}",
          flush=True)
    return dict(config=z["config"], prompts=N, samples=K, tokens=T, batch=B, seconds=sec,
                candidates_per_s=cand_s, ratios=ratios, matrix_max_diff=diffs,
                ceiling_candidates_per_s=ceiling, jax_peak_flops=peak, flops_per_candidate=flops)


if __name__ == "__main__":
    main()
