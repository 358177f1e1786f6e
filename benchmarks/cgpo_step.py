"""One CGPO step on bench-100m, phase by phase, and the code judge's throughput.

    .venv/bin/python benchmarks/cgpo_step.py           # bench-100m, 2 tasks (~10 min, 2 cores)
    .venv/bin/python benchmarks/cgpo_step.py --quick   # bench-tiny (~1 min)

CGPO step (`jaxalign.algorithms.cgpo.run_cgpo`, 3 steps; step 1 compiles, steps 2-3 are shown):
random bench-100m Llama policy (float32, CPU) and a random bench-100m scalar reward model scoring
both tasks; task "chat" (CRPG, IFEval-style instruction judge: 'no commas' and at most 64 words)
and task "math" (CRRAFT, the math-verify judge in its worker process), each 8 prompts of 32
random words x K=4 samples of 48 new tokens (temperature 1). The seconds per phase are the
loop's own: sampling (the sampler, both tasks), scoring (the reward model), judging (every
judge), training (log-probs of the policy and the reference, the coefficients, one update).

Code judge: `CodeJudge(workers=2)` on 32 candidate solutions (16 correct, 16 wrong) of a small
function with 4 unit tests each, in its sandbox (namespaces, unprivileged uid, limits); the
figure is unit tests run per second of wall time (and candidates per second).

Measured 2026-12-05 (2-core CPU VM, idle; JAX f32 matmul peak 60.3 GFLOP/s), seconds per step:
  step           sampling  scoring  judging  training  total   sample tok/s
  1 (compiles)      32.44    24.32     0.00    173.02  229.78      95
  2                 26.32    22.72     0.00    147.42  196.46     117
  3                 26.16    23.08     0.00    140.74  189.99     117
Training (log-probs of policy and reference over the 72 rows, then one update) is 74% of a
step: ~6.3 TFLOP at 45 GFLOP/s, 75% of the matmul peak. Judging rounds to 0 here: random text
fails the instruction rules and has no "The final answer is", so math-verify is never asked;
real responses cost more (the code judge's figure below). Code judge, 2 workers: 32
candidates x 4 unit tests in 2.04 s, 62.6 unit tests/s (15.7 candidates/s).

No PyTorch peer: TRL has no CGPO trainer (its PR #2190 is unmerged), and the phases are
jaxalign's own pieces measured elsewhere against transformers (benchmarks/sampling.py,
scoring.py, dpo_step.py). The JAX float32 matmul peak is printed as the machine's ceiling.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.dpo_step import PAD, jax_matmul_peak, make_tokenizer, word  # noqa: E402
from jaxalign.algorithms.cgpo import CGPOSettings, CGPOTask, run_cgpo  # noqa: E402
from jaxalign.algorithms.run_rest import score_step  # noqa: E402
from jaxalign.data import Encoder  # noqa: E402
from jaxalign.models import init_params  # noqa: E402
from jaxalign.models.presets import preset  # noqa: E402
from jaxalign.reward import RewardScorer, init_reward_params  # noqa: E402
from jaxalign.reward.instructions import InstructionJudge  # noqa: E402
from jaxalign.reward.math_judge import MathAnswerJudge  # noqa: E402

SIZES = {"full": dict(model="bench-100m", prompts=8, words=32, samples=4, new=48, matmul=2048),
         "quick": dict(model="bench-tiny", prompts=4, words=16, samples=2, new=8, matmul=512)}
PHASES = ("sample_seconds", "score_seconds", "judge_seconds", "train_seconds")
SOLUTION = "```python\ndef add(a, b):\n    return a {op} b\n```"
TESTS = ("assert add(1, 2) == 3\nassert add(0, 0) == 0\nassert add(-1, 1) == 0\n"
         "assert add(2, 2) == 4")


def cgpo_step(z: dict, workdir: str, seed: int = 0) -> list[dict]:
    cfg = preset(z["model"])
    init = jax.jit(init_params, static_argnums=0)
    params, backbone = init(cfg, jax.random.key(seed)), init(cfg, jax.random.key(seed + 1))
    rcfg = cfg.replace(pad_token_id=PAD)
    rparams = init_reward_params(rcfg, jax.random.key(seed + 2), backbone=backbone)
    tok = make_tokenizer(cfg.vocab_size)
    rng = np.random.default_rng(seed)
    enc = Encoder(tok)

    def rows(name, meta):
        out = []
        for i in range(2 * z["prompts"]):
            text = " ".join(word(int(t)) for t in rng.integers(3, cfg.vocab_size, z["words"]))
            out.append({"id": f"{name}{i}", "prompt": text,
                        "prompt_tokens": enc.encode_prompt(text, f"{name}{i}"), "metadata": meta})
        return out

    scorer = RewardScorer(rcfg, rparams, tok, batch_size=32, max_length=128,
                          max_prompt_length=64)
    score = score_step(scorer)
    instructions = {"instruction_id_list": ["punctuation:no_comma",
                                            "length_constraints:number_words"],
                    "kwargs": [{}, {"num_words": 64, "relation": "less than"}]}
    tasks = [CGPOTask("chat", rows("chat", instructions), score, judges=[InstructionJudge()],
                      optimizer="crpg", samples=z["samples"], prompts_per_step=z["prompts"],
                      kl_max=10.0),
             CGPOTask("math", rows("math", {"answer": "42"}), score,
                      judges=[MathAnswerJudge()], optimizer="crraft", samples=z["samples"],
                      prompts_per_step=z["prompts"], kl_max=10.0)]
    s = CGPOSettings(steps=3, max_new_tokens=z["new"], checkpoint_every=100, sample_batch=16)
    out = run_cgpo(s, tasks, policy=(cfg, params), tokenizer=tok, workdir=workdir,
                   optim=dict(optimizer="adamw", lr=1e-6, grad_clip=1.0), seed=seed,
                   max_len=z["words"] + z["new"] + 8)
    for t in tasks:
        for j in t.judges:
            if hasattr(j, "close"):
                j.close()
    return out["history"]


def code_judge_throughput(candidates: int = 32) -> dict:
    from jaxalign.reward.code_judge import CodeJudge
    judge = CodeJudge(workers=2, timeout_s=10.0)
    completions = [SOLUTION.format(op="+" if i % 2 == 0 else "-") for i in range(candidates)]
    meta = [{"tests": TESTS, "entry_point": "add"}] * candidates
    judge(["write add"] * 2, completions[:2], meta[:2])  # warm-up
    t0 = time.perf_counter()
    v = judge(["write add"] * candidates, completions, meta)
    dt = time.perf_counter() - t0
    passed = int(np.asarray(v.passed).sum())
    if passed != candidates // 2:
        raise AssertionError(f"code judge passed {passed} of {candidates}, expected "
                             f"{candidates // 2}")
    tests = candidates * TESTS.count("assert")
    return {"candidates": candidates, "seconds": dt, "candidates_per_s": candidates / dt,
            "unit_tests_per_s": tests / dt}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="bench-tiny, 4 prompts, 8 tokens")
    ap.add_argument("--no_code_judge", action="store_true")
    args = ap.parse_args(argv)
    z = SIZES["quick" if args.quick else "full"]
    peak = jax_matmul_peak(z["matmul"], 5)
    with tempfile.TemporaryDirectory() as d:
        hist = cgpo_step(z, d)
    print(f"CGPO step on {z['model']} ({jax.devices()[0].platform}, {os.cpu_count()} cpus; "
          f"JAX f32 matmul peak {peak / 1e9:.1f} GFLOP/s); 2 tasks x {z['prompts']} prompts x "
          f"K={z['samples']}, {z['new']} new tokens")
    print("| step | sampling s | scoring s | judging s | training s | total s | sample tok/s |")
    print("|---|---|---|---|---|---|---|")
    for h in hist:
        total = sum(h[k] for k in PHASES)
        print(f"| {h['step']}{' (compiles)' if h['step'] == 1 else ''} | "
              + " | ".join(f"{h[k]:.2f}" for k in PHASES)
              + f" | {total:.2f} | {h['sample_tokens_per_s']:.0f} |")
    report = {"history": hist, "matmul_peak_flops": peak}
    if not args.no_code_judge:
        cj = code_judge_throughput()
        print(f"code judge, 2 workers: {cj['candidates']} candidates x 4 unit tests in "
              f"{cj['seconds']:.2f} s: {cj['unit_tests_per_s']:.1f} unit tests/s "
              f"({cj['candidates_per_s']:.1f} candidates/s)")
        report["code_judge"] = cj
    return report


if __name__ == "__main__":
    main()
