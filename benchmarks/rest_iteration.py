"""One ReST grow + improve iteration on bench-100m, phase by phase: jaxalign against PyTorch peers.

Runs `run_rest` (BC of 1 step, then G=1 grow step with I=0: grow, score, improve_0) and reports
iteration 1: seconds in grow (P prompts x n samples of `new` tokens, temperature 0.8), score (the
reward model on every sample and row of D) and train (improve_0: SFT on all of D_g), each
phase's throughput, its share of the iteration's wall time, and its ratio to a PyTorch peer.
Random bench-100m Llama policy and scalar reward model (float32, CPU), a word-level tokenizer of
the model's vocabulary (`dpo_step.make_tokenizer`), D = P random prompts of 32 words, each with
a completion of new - 1 words + EOS; a few held-out prompts (one sample each).

    .venv/bin/python benchmarks/rest_iteration.py          # bench-100m: P=32, n=4, 64 new
        # tokens (grow batch 128 rows), 8 improve steps of 16 rows (~17 min on 2 idle cores)
    .venv/bin/python benchmarks/rest_iteration.py --quick  # bench-tiny: P=8, n=2, 16 new
        # tokens, 2 steps (~1 min; tests/algorithms/test_rest_benchmark.py runs it)

No early stop on either side: the policy's config gets an empty stop-id set (eos_token_id=(),
so the sampler does not fall back to the tokenizer's EOS), and `generate` runs with
eos_token_id=None and min_new_tokens = max_new_tokens; every row's length is checked.

jaxalign: the iteration runs twice in one process, each in a fresh workdir: "cold" (the first
run: iteration 1 compiles what BC did not, e.g. the grow batch's sampler) and "warm" (jit caches
warm). A persistent compilation cache in a temp dir serves what a new jit object traces again
(each run_rest call builds its own sampler; BC and improve_0 differ in steps, so in optimizer):
without it the cold and the warm improve_0 would compile the step again (its first step's
tokens/s shows it). Seconds are the driver's phase seconds
(summary.json), all of a phase's work: grow writes shards, score tokenizes and writes records,
train runs the held-out evaluation at step 0 and N, checkpoints and saves the policy. Throughput
(warm run): grow = generated tokens / sample_seconds; score = scored tokens (prompt + completion
+ EOS, as the reward model reads them) / score_seconds; train = the median of metrics.jsonl's
train/tokens_per_s over steps 2.. (step 1, with compile when cold, shown apart). jaxalign pads
rows to its length buckets (96 -> 128); tokens/s counts real tokens on both sides.

PyTorch (transformers, float32, CPU; the starting weights via save_hf / save_reward_hf), run
after jaxalign (interleaving slows torch, see dpo_step.py):
  grow   `generate(do_sample=True, temperature=0.8, top_k=0, num_return_sequences=n, ...)` on the
         same prompts (left-padded): one call timed after a 2-token warm-up; generated tokens/s.
  score  LlamaForSequenceClassification under no_grad on the very sequences jaxalign scored, in
         batches of the scorer's size right-padded to their longest (scores checked equal).
  train  forward, cross-entropy on completion tokens, backward, clip, AdamW step (the floor of
         TRL's SFTTrainer step) on improve_0's rows in batches of 16 right-padded to their
         longest; median step after one warm-up.
ratio = jaxalign / PyTorch throughput (> 1: jaxalign faster). The JAX float32 matmul peak
(`dpo_step.jax_matmul_peak`, best of before and after) is printed as the machine's ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.dpo_step import PAD, jax_matmul_peak, make_tokenizer, word  # noqa: E402
from jaxalign.algorithms import driver as drv_lib  # noqa: E402
from jaxalign.algorithms.rest import RestSettings, run_rest  # noqa: E402
from jaxalign.algorithms.run_rest import score_step  # noqa: E402
from jaxalign.data import Encoder  # noqa: E402
from jaxalign.models import init_params  # noqa: E402
from jaxalign.models.hf import save_hf  # noqa: E402
from jaxalign.models.presets import preset  # noqa: E402
from jaxalign.reward import RewardScorer, init_reward_params, save_reward_hf  # noqa: E402

SIZES = {  # grow batch = prompts x samples rows; improve_0 trains on prompts x (samples + 1)
    "full": dict(model="bench-100m", prompts=32, words=32, samples=4, new=64, steps=8, batch=16,
                 heldout=4, torch_steps=3, matmul=2048),
    "quick": dict(model="bench-tiny", prompts=8, words=32, samples=2, new=16, steps=2, batch=16,
                  heldout=2, torch_steps=2, matmul=1024),
}
OPTIM = dict(optimizer="adamw", lr=1e-5, grad_clip=1.0)  # b1 0.9, b2 0.999, eps 1e-8, no decay
MAX_LEN, SCORE_BATCH, PHASES = 128, 32, ("grow", "score", "train")


def build(z: dict, seed: int = 0) -> dict:
    cfg = preset(z["model"])
    init = jax.jit(init_params, static_argnums=0)
    params, backbone = init(cfg, jax.random.key(seed)), init(cfg, jax.random.key(seed + 1))
    rcfg = cfg.replace(pad_token_id=PAD)
    rparams = init_reward_params(rcfg, jax.random.key(seed + 2), backbone=backbone)
    tok = make_tokenizer(cfg.vocab_size)
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(word(int(i)) for i in rng.integers(3, cfg.vocab_size, n))  # noqa
    enc, data = Encoder(tok), []
    for i in range(z["prompts"]):
        prompt = text(z["words"])
        p, c = enc.encode(prompt, " " + text(z["new"] - 1))  # completion: `new` ids with EOS
        data.append({"id": i, "prompt": prompt, "prompt_tokens": p, "tokens": c})
    heldout = [{"id": f"h{i}", "prompt": text(z["words"])} for i in range(z["heldout"])]
    scorer = RewardScorer(rcfg, rparams, tok, batch_size=SCORE_BATCH, max_length=MAX_LEN,
                          max_prompt_length=MAX_LEN // 2)
    return dict(cfg=cfg, params=params, rcfg=rcfg, rparams=rparams, tok=tok, data=data,
                heldout=heldout, scorer=scorer)


def run_jaxalign(b: dict, z: dict, workdir: str) -> dict:
    """BC (1 step) + one grow/score/improve_0 iteration; iteration 1's phase numbers."""
    s = RestSettings(grow_steps=1, improve_steps=0, samples=z["samples"], max_new_tokens=z["new"],
                     bc_steps=1, improve_train_steps=z["steps"], select="last",
                     eval_every=z["steps"], eval_samples=1, sample_batch=z["prompts"])
    ends = []  # wall clock at the end of each iteration (BC, iteration 1)
    config = {"benchmark": "rest_iteration", **z}
    run_rest(s, policy=(b["cfg"].replace(eos_token_id=()), b["params"]), tokenizer=b["tok"],
             data=b["data"], heldout=b["heldout"], score=score_step(b["scorer"]),
             workdir=workdir, config=config, optim=OPTIM, batch_size=z["batch"], max_len=MAX_LEN,
             on_event=lambda e: ends.append(time.perf_counter()) if e == "iteration" else None)
    drv = drv_lib.Driver(workdir, config)
    grow, score, train = (drv.summary(1, p) for p in ("grow", "score", "train_improve_0"))
    if grow["tokens"] != grow["records"] * z["new"]:
        raise RuntimeError(f"grow stopped early: {grow['tokens']} tokens in {grow['records']} rows")
    scored = drv_lib.read_scored(drv.dir(1, "score"), score)
    seqs = [b["scorer"].encode(r["prompt"], r["completion"]) for r in scored]
    rows, _ = drv_lib.read_rows(drv.dir(1, "build_improve_0"))
    with open(os.path.join(drv.dir(1, "train_improve_0"), "metrics.jsonl")) as fh:
        tok_s = [m["train/tokens_per_s"] for m in map(json.loads, fh) if "train/loss" in m]
    row_len = np.mean([len(r["prompt"]) + len(r["completion"]) for r in rows])
    steady = statistics.median(tok_s[1:] or tok_s)
    return dict(seconds={"grow": grow["seconds"], "score": score["seconds"],
                         "train": train["seconds"]}, iteration=ends[1] - ends[0],
                tok_s={"grow": grow["tokens_per_s"],
                       "score": sum(map(len, seqs)) / score["score_seconds"], "train": steady},
                train_first_tok_s=tok_s[0], train_step_s=z["batch"] * row_len / steady,
                seqs=seqs, rewards=np.array([r["reward"] for r in scored]), rows=rows)


def right_pad(seqs):
    import torch
    n = max(map(len, seqs))
    ids = torch.tensor([s + [PAD] * (n - len(s)) for s in seqs])
    att = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
    return ids, att


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def torch_peers(b: dict, z: dict, j: dict, tmp: str) -> dict:
    import torch
    import transformers as T
    T.logging.set_verbosity_error()
    T.logging.disable_progress_bar()
    torch.manual_seed(0)
    save_hf(os.path.join(tmp, "policy"), b["cfg"], b["params"])
    save_reward_hf(os.path.join(tmp, "reward"), b["rcfg"], b["rparams"])
    lm = T.LlamaForCausalLM.from_pretrained(os.path.join(tmp, "policy"), dtype=torch.float32)
    lm.generation_config.eos_token_id = None
    prompts = [r["prompt_tokens"] for r in b["data"]]
    L = max(map(len, prompts))  # left padding
    ids = torch.tensor([[PAD] * (L - len(p)) + p for p in prompts])
    att = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    gen = lambda n: lm.eval().generate(  # noqa: E731
        input_ids=ids, attention_mask=att, do_sample=True, temperature=0.8, top_k=0, top_p=1.0,
        max_new_tokens=n, min_new_tokens=n, num_return_sequences=z["samples"],
        eos_token_id=None, pad_token_id=PAD)
    with torch.no_grad():
        gen(2)
        grow_s, out = timed(lambda: gen(z["new"]))
    assert out.shape == (len(prompts) * z["samples"], L + z["new"]), out.shape

    rm = T.LlamaForSequenceClassification.from_pretrained(os.path.join(tmp, "reward"),
                                                          dtype=torch.float32).eval()
    batches = [right_pad(j["seqs"][i:i + SCORE_BATCH])
               for i in range(0, len(j["seqs"]), SCORE_BATCH)]
    with torch.no_grad():
        rm(input_ids=batches[0][0], attention_mask=batches[0][1])  # warm-up
        score_s, scores = timed(lambda: torch.cat(
            [rm(input_ids=i, attention_mask=a).logits[:, 0] for i, a in batches]).numpy())
    diff = float(np.max(np.abs(scores - j["rewards"])))
    print(f"same reward model check: max |jaxalign - torch| score = {diff:.2e}", flush=True)
    if not diff <= 1e-3 * max(1.0, float(np.abs(scores).max())):
        raise RuntimeError(f"jaxalign and transformers reward scores disagree (max diff {diff})")

    lm.train()
    opt = torch.optim.AdamW(lm.parameters(), lr=OPTIM["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    rows, B, times, tokens = j["rows"], z["batch"], [], []
    for k in range(1 + z["torch_steps"]):
        batch = [rows[(k * B + i) % len(rows)] for i in range(B)]
        ids_, att_ = right_pad([r["prompt"] + r["completion"] for r in batch])
        labels = ids_.masked_fill(att_ == 0, -100)
        for i, r in enumerate(batch):
            labels[i, :len(r["prompt"])] = -100  # loss on completion tokens only

        def step():
            logits = lm(input_ids=ids_, attention_mask=att_).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                                     labels[:, 1:].flatten(), ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), OPTIM["grad_clip"])
            opt.step()
            opt.zero_grad(set_to_none=True)
        times.append(timed(step)[0])
        tokens.append(int(att_.sum()))
    step_s = statistics.median(times[1:])
    return dict(tok_s={"grow": out.shape[0] * z["new"] / grow_s,
                       "score": sum(map(len, j["seqs"])) / score_s,
                       "train": statistics.median(tokens[1:]) / step_s},
                seconds={"grow": grow_s, "score": score_s}, train_step_s=step_s)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="bench-tiny, P=8, n=2, 16 tokens")
    z = SIZES["quick" if ap.parse_args(argv).quick else "full"]
    if not jax.config.jax_compilation_cache_dir:  # else the cold run may read older entries
        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="rest_iter_jit_"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    print(f"jax {jax.__version__} ({jax.default_backend()}, {os.cpu_count()} cpus, load "
          f"{os.getloadavg()[0]:.1f}) | {z} | compile cache {jax.config.jax_compilation_cache_dir}",
          flush=True)
    peak = jax_matmul_peak(z["matmul"], 3)
    b = build(z)
    runs = {}
    for name in ("cold", "warm"):
        with tempfile.TemporaryDirectory(prefix=f"rest_iter_{name}_") as d:
            runs[name] = run_jaxalign(b, z, d)
        print(f"jaxalign {name}: iteration {runs[name]['iteration']:.1f}s, phases "
              f"{ {k: round(v, 2) for k, v in runs[name]['seconds'].items()} }", flush=True)
    cold, warm = runs["cold"], runs["warm"]
    with tempfile.TemporaryDirectory(prefix="rest_iter_torch_") as d:
        pt = torch_peers(b, z, warm, d)
    peak = max(peak, jax_matmul_peak(z["matmul"], 3))

    unit = {"grow": "generated", "score": "scored", "train": "trained"}
    ratios = {p: warm["tok_s"][p] / pt["tok_s"][p] for p in PHASES}
    print(f"\nReST iteration 1 on {z['model']}: grow {z['prompts']} prompts x {z['samples']} x "
          f"{z['new']} tokens, score {len(warm['seqs'])} sequences, improve_0 {z['steps']} steps "
          f"x {z['batch']} rows ({len(warm['rows'])} rows); float32, CPU; throughput: warm run")
    head = (f"{'phase':<6} {'cold s':>8} {'warm s':>8} {'share':>6} {'jaxalign tok/s':>15} "
            f"{'PyTorch tok/s':>14} {'ratio':>7}  tokens")
    print(head + "\n" + "-" * len(head))
    for p in PHASES:
        print(f"{p:<6} {cold['seconds'][p]:8.2f} {warm['seconds'][p]:8.2f} "
              f"{warm['seconds'][p] / warm['iteration']:6.1%} {warm['tok_s'][p]:15.1f} "
              f"{pt['tok_s'][p]:14.1f} {ratios[p]:6.2f}x  {unit[p]}")
    rest = {k: runs[k]["iteration"] - sum(runs[k]["seconds"].values()) for k in runs}
    print(f"{'other':<6} {rest['cold']:8.2f} {rest['warm']:8.2f} "
          f"{rest['warm'] / warm['iteration']:6.1%}   (build, reading records, between phases)")
    print(f"{'total':<6} {cold['iteration']:8.2f} {warm['iteration']:8.2f} {1:6.0%}")
    print(f"train step: jaxalign {warm['train_step_s']:.3f}s steady (first step: "
          f"{cold['train_first_tok_s']:.1f} tok/s cold, {warm['train_first_tok_s']:.1f} warm), "
          f"PyTorch {pt['train_step_s']:.3f}s; PyTorch grow {pt['seconds']['grow']:.2f}s, score "
          f"{pt['seconds']['score']:.2f}s")
    print(f"machine ceiling: JAX float32 matmul peak {peak / 1e9:.1f} GFLOP/s "
          f"({z['matmul']}^3, best of 3, before and after)")
    for p in PHASES:
        print(f"RATIO phase={p} jaxalign/pytorch={ratios[p]:.3f}")
    return dict(config=z["model"], ratios=ratios, jax_peak_flops=peak,
                jaxalign={k: {"seconds": r["seconds"], "iteration": r["iteration"],
                              "tok_s": r["tok_s"]} for k, r in runs.items()},
                pytorch={"tok_s": pt["tok_s"], "train_step_s": pt["train_step_s"]})


if __name__ == "__main__":
    main()
