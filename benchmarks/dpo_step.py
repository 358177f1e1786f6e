"""Steady-state DPO train-step throughput: jaxalign (JAX, CPU) vs TRL's DPOTrainer (PyTorch, CPU).

Same random Llama model (jaxalign params exported with `save_hf` and loaded by transformers), same
batch (8 pairs x 128 tokens: 32-token prompt + 96-token completions, no padding), float32 on both
sides, reference log-probs computed on the fly by a frozen copy of the model in both, no gradient
checkpointing, RMSprop (torch semantics) with lr 1e-6 constant and grad-norm clipping at 1.0.

  jaxalign: `jax.jit(make_train_step(preference_objective(...), make_optimizer(...)),
             donate_argnums=(0,))`, timed per call until the outputs are ready (after compiling).
  TRL:      `DPOTrainer(...).train()` over N+1 steps; a callback times each optimizer step from
             `on_step_begin` to `on_step_end` (forward of policy and reference, backward, grad clip,
             optimizer and scheduler step, zero_grad; the batch is collated before, not timed);
             the first step is dropped. Every collated batch is checked to be 16 x 128 tokens
             with 96 completion tokens per row, and both models' log-probs of the batch must agree.

Reported per config: median step time after warmup (and the min), tokens/s (tokens = 2 x 8 x 128
per step), jaxalign/TRL ratio, and model FLOP utilisation of each framework against a float32
matmul peak measured here for that framework (jitted `a @ b` in JAX, `torch.matmul` in PyTorch,
same shapes; best of the measurements before and after the runs, as the host may be shared).

    .venv/bin/python benchmarks/dpo_step.py           # bench-tiny and bench-100m (~10 min, 2 cores)
    .venv/bin/python benchmarks/dpo_step.py --quick   # bench-tiny, few steps (< 1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxalign.models import completion_logprobs, init_params  # noqa: E402
from jaxalign.models.hf import save_hf  # noqa: E402
from jaxalign.models.presets import HUB_CONFIGS, preset  # noqa: E402
from jaxalign.objectives import preference_objective  # noqa: E402
from jaxalign.train.optim import make_optimizer  # noqa: E402
from jaxalign.train.step import init_state, make_train_step  # noqa: E402

PAIRS, PROMPT, COMPLETION = 8, 32, 96
SEQ = PROMPT + COMPLETION  # 128
TOKENS_PER_STEP = 2 * PAIRS * SEQ
T0 = time.perf_counter()
PAD, BOS, EOS = 0, 1, 2  # ids reserved in the benchmark tokenizer; words are ids 3..V-1
LR, BETA, CLIP = 1e-6, 0.1, 1.0

FLOPS_FORMULA = (
    "model FLOPs/step = 3 x F(policy: fwd+bwd) + 1 x F(reference: fwd), "
    "F = 2 x N x tokens + 2 x 2 x L x T^2 x d x sequences; N = params minus the input embedding "
    "table (lm_head counted), tokens = 2 x 8 x 128, sequences = 16, T = 128, "
    "L = layers, d = hidden size")


# ----------------------------------------------------------------------------------------------
# Shared data


def make_rows(vocab: int, seed: int = 0):
    """8 pairs of id lists: prompt 32 ids, chosen/rejected 95 ids + EOS (96 completion tokens)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(PAIRS):
        rows.append(dict(prompt=rng.integers(3, vocab, PROMPT).tolist(),
                         chosen=rng.integers(3, vocab, COMPLETION - 1).tolist() + [EOS],
                         rejected=rng.integers(3, vocab, COMPLETION - 1).tolist() + [EOS]))
    return rows


def jax_batch(rows) -> dict:
    out = {}
    for side in ("chosen", "rejected"):
        tokens = np.array([r["prompt"] + r[side] for r in rows], np.int32)
        assert tokens.shape == (PAIRS, SEQ), tokens.shape
        loss_mask = np.zeros_like(tokens, bool)
        loss_mask[:, PROMPT:] = True
        out.update({f"{side}_tokens": tokens, f"{side}_mask": np.ones_like(tokens, bool),
                    f"{side}_loss_mask": loss_mask})
    out["index"] = np.arange(PAIRS, dtype=np.int64)
    out["weight"] = np.ones(PAIRS, np.float32)
    return out


def model_flops(cfg, params) -> tuple[float, int]:
    n_total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    n = n_total - int(np.prod(params["embed"]["embedding"].shape))
    if cfg.tie_word_embeddings:  # the tied table is also the lm_head matmul
        n += int(np.prod(params["embed"]["embedding"].shape))
    fwd = 2 * n * TOKENS_PER_STEP + 2 * 2 * cfg.num_layers * SEQ**2 * cfg.hidden_size * 2 * PAIRS
    return 3 * fwd + fwd, n


def median_after(times, warmup):
    kept = times[warmup:] or times
    return statistics.median(kept)


# ----------------------------------------------------------------------------------------------
# Matmul peaks


def jax_matmul_peak(n: int, reps: int) -> float:
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


def torch_matmul_peak(n: int, reps: int) -> float:
    import torch
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=torch.float32)
    b = torch.randn(n, n, generator=g, dtype=torch.float32)
    torch.matmul(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


# ----------------------------------------------------------------------------------------------
# jaxalign


class JaxalignStepper:
    """The jitted jaxalign DPO step on a fixed batch; `compile()` once, then `step()` -> seconds."""

    def __init__(self, cfg, params, batch):
        ref_params = jax.tree.map(lambda x: x.copy(), params)  # frozen reference: its own copy
        tx, _ = make_optimizer(optimizer="rmsprop", lr=LR, grad_clip=CLIP)
        objective = preference_objective(cfg, loss="dpo.sigmoid", loss_kwargs={"beta": BETA},
                                         ref_params=ref_params)
        self._step = jax.jit(make_train_step(objective, tx, micro_batches=1),
                             donate_argnums=(0,))
        self._state = init_state(jax.tree.map(lambda x: x.copy(), params), tx)
        self._batch = jax.device_put(batch)
        self._rng = jax.random.key(0)
        self.times = []

    def _run(self) -> float:
        t = time.perf_counter()
        self._state, metrics = self._step(self._state, self._batch, self._rng)
        jax.block_until_ready((self._state, metrics))
        return time.perf_counter() - t

    def compile(self) -> float:
        return self._run()  # compile + first run

    def step(self) -> None:
        self.times.append(self._run())


def jax_logps(cfg, params, batch) -> np.ndarray:
    f = jax.jit(lambda p, b: completion_logprobs(
        cfg, p, jnp.concatenate([b["chosen_tokens"], b["rejected_tokens"]]),
        jnp.concatenate([b["chosen_mask"], b["rejected_mask"]]),
        jnp.concatenate([b["chosen_loss_mask"], b["rejected_loss_mask"]])).sum)
    return np.asarray(f(params, batch))


# ----------------------------------------------------------------------------------------------
# TRL


def word(i: int) -> str:
    return f"w{i}"


def make_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    ids = {"<pad>": PAD, "<s>": BOS, "</s>": EOS}
    ids.update({word(i): i for i in range(3, vocab)})
    tok = Tokenizer(models.WordLevel(ids, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<pad>")
    assert len(fast) == vocab, (len(fast), vocab)
    return fast


def text_rows(rows):
    """Text rows whose tokenization gives back exactly the ids of `rows` (EOS added by TRL)."""
    def words(ids):
        return " ".join(word(i) for i in ids)
    return [dict(prompt=words(r["prompt"]), chosen=" " + words(r["chosen"][:-1]),
                 rejected=" " + words(r["rejected"][:-1])) for r in rows]


def bench_trl(model_dir: str, vocab: int, rows, steps: int, warmup: int, workdir: str) -> dict:
    import datasets
    import torch
    import transformers
    from datasets import Dataset
    from transformers import LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref_model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = make_tokenizer(vocab)
    dataset = Dataset.from_list(text_rows(rows))
    total = warmup + steps + 1
    warnings.simplefilter("ignore", FutureWarning)  # transformers' renamed-argument notices
    args = DPOConfig(
        output_dir=os.path.join(workdir, "trl"), per_device_train_batch_size=PAIRS,
        max_length=SEQ, precompute_ref_log_probs=False, gradient_checkpointing=False,
        bf16=False, fp16=False, use_cpu=True, report_to=[], logging_steps=10**9,
        save_strategy="no", optim="rmsprop", learning_rate=LR, lr_scheduler_type="constant",
        max_grad_norm=CLIP, beta=BETA, loss_type=["sigmoid"], max_steps=total,
        dataloader_num_workers=0, disable_tqdm=True, seed=0)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                         processing_class=tokenizer)

    shapes = []
    collate = trainer.data_collator

    def recording_collator(examples):
        out = collate(examples)
        shapes.append((tuple(out["input_ids"].shape),
                       tuple(out["completion_mask"].sum(1).tolist()),
                       int(out["attention_mask"].sum())))
        return out

    trainer.data_collator = recording_collator

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    timer = StepTimer()
    trainer.add_callback(timer)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()  # its end-of-training summary dict goes to the swallowed stdout
    want = ((2 * PAIRS, SEQ), (COMPLETION,) * (2 * PAIRS), 2 * PAIRS * SEQ)
    bad = [s for s in shapes if s != want]
    if bad or not shapes:
        raise RuntimeError(f"TRL batches are not 16 x 128 with 96 completion tokens: {bad[:2]}")
    times = timer.times[1:]  # the first step warms up torch (allocator, kernels)
    # Check the two models are the same: policy log-probs of the batch, before training.
    ids = torch.tensor([r["prompt"] + r[side] for side in ("chosen", "rejected") for r in rows])
    with torch.no_grad():
        logits = ref_model(input_ids=ids).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    ref_logps = lp[:, PROMPT - 1:].sum(1).numpy()
    return dict(step_s=median_after(times, warmup), times=times, ref_logps=ref_logps,
                batch_shape=shapes[0][0])


# ----------------------------------------------------------------------------------------------


def log(name: str, msg: str) -> None:
    print(f"[{time.perf_counter() - T0:5.1f}s {name}] {msg}", flush=True)


def run_config(name: str, steps: int, warmup: int) -> dict:
    cfg = preset(name)
    vocab = HUB_CONFIGS[name]["vocab_size"]
    params = init_params(cfg, jax.random.key(0))
    flops, n_params = model_flops(cfg, params)
    rows = make_rows(vocab)
    batch = jax_batch(rows)
    with tempfile.TemporaryDirectory(prefix="dpo_step_") as tmp:
        model_dir = os.path.join(tmp, "model")
        save_hf(model_dir, cfg, params)
        j_logps = jax_logps(cfg, params, batch)
        log(name, f"N(non-embedding)={n_params:,}  model FLOPs/step={flops / 1e9:.2f} GFLOP")
        # One framework after the other: interleaving their steps in one process was tried and
        # slows torch several-fold (its OpenMP workers compete with XLA's thread pool).
        jx = JaxalignStepper(cfg, params, batch)
        first = jx.compile()
        for _ in range(warmup + steps):
            jx.step()
        j = dict(step_s=median_after(jx.times, warmup), times=jx.times)
        log(name, f"jaxalign: compile+first step {first:.1f}s, step times "
                  f"{' '.join(f'{x:.3f}' for x in j['times'])}")
        t = bench_trl(model_dir, vocab, rows, steps, warmup, tmp)
        log(name, f"TRL: batch input_ids {t['batch_shape']}, step times "
                  f"{' '.join(f'{x:.3f}' for x in t['times'])}")
    diff = float(np.max(np.abs(j_logps - t["ref_logps"])))
    scale = float(np.max(np.abs(j_logps)))
    log(name, f"same model check: max |seq logp jaxalign - torch| = {diff:.2e} "
              f"(|logp| ~ {scale:.1f})")
    if not diff <= 1e-3 * max(scale, 1.0):
        raise RuntimeError(f"{name}: jaxalign and torch models disagree (max diff {diff})")
    return dict(name=name, jax_step=j["step_s"], trl_step=t["step_s"], flops=flops,
                jax_min=min(j["times"][warmup:] or j["times"]),
                trl_min=min(t["times"][warmup:] or t["times"]))


def measure_peaks(n: int, reps: int) -> dict:
    return {"jax": jax_matmul_peak(n, reps), "torch": torch_matmul_peak(n, reps)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bench-tiny only, few steps")
    parser.add_argument("--configs", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compile")
    parser.add_argument("--matmul_n", type=int, default=None)
    a = parser.parse_args()
    configs = a.configs or (["bench-tiny"] if a.quick else ["bench-tiny", "bench-100m"])
    matmul_n = a.matmul_n or (1024 if a.quick else 2048)

    import torch
    import transformers
    import trl
    print(f"jax {jax.__version__} ({jax.default_backend()}, {os.cpu_count()} cpus) | torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads) | transformers "
          f"{transformers.__version__} | trl {trl.__version__}", flush=True)
    reps = 3 if a.quick else 10
    start = measure_peaks(matmul_n, reps)
    print(f"float32 matmul peak ({matmul_n}^3, best of {reps}), before: JAX "
          f"{start['jax'] / 1e9:.1f} GFLOP/s, PyTorch {start['torch'] / 1e9:.1f} GFLOP/s",
          flush=True)
    print(FLOPS_FORMULA, flush=True)

    results = []
    for name in configs:
        big = HUB_CONFIGS[name]["hidden_size"] >= 512
        steps = a.steps or (3 if a.quick else (4 if big else 20))
        warmup = a.warmup if a.warmup is not None else (0 if a.quick or big else 3)
        results.append(run_config(name, steps, warmup))

    # The host may be shared: each framework's best peak of the two measurements (lower MFU).
    end = measure_peaks(matmul_n, reps)
    peaks = {k: max(start[k], end[k]) for k in start}
    print(f"float32 matmul peak ({matmul_n}^3, best of {reps}), after: JAX "
          f"{end['jax'] / 1e9:.1f} GFLOP/s, PyTorch {end['torch'] / 1e9:.1f} GFLOP/s", flush=True)
    for r in results:
        r["jax_tok"] = TOKENS_PER_STEP / r["jax_step"]
        r["trl_tok"] = TOKENS_PER_STEP / r["trl_step"]
        r["ratio"] = r["jax_tok"] / r["trl_tok"]
        r["jax_mfu"] = r["flops"] / r["jax_step"] / peaks["jax"]
        r["trl_mfu"] = r["flops"] / r["trl_step"] / peaks["torch"]

    print()
    print(f"DPO train step, {PAIRS} pairs x {SEQ} tokens ({TOKENS_PER_STEP} tokens/step), float32, "
          f"reference on the fly, no remat; median (min) step after warmup")
    print(FLOPS_FORMULA)
    head = (f"{'config':<11} {'jaxalign tok/s':>14} {'TRL tok/s':>10} {'ratio':>7} "
            f"{'jax MFU':>8} {'TRL MFU':>8} {'jax step (min)':>17} {'TRL step (min)':>17}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['name']:<11} {r['jax_tok']:>14.1f} {r['trl_tok']:>10.1f} {r['ratio']:>6.2f}x "
              f"{r['jax_mfu']:>7.1%} {r['trl_mfu']:>7.1%} "
              f"{r['jax_step']:>8.3f}s ({r['jax_min']:.3f}s) "
              f"{r['trl_step']:>8.3f}s ({r['trl_min']:.3f}s)")
    print(f"peaks (MFU denominators): JAX {peaks['jax'] / 1e9:.1f} GFLOP/s (jitted a @ b), PyTorch "
          f"{peaks['torch'] / 1e9:.1f} GFLOP/s (torch.matmul), float32 {matmul_n}^3")
    for r in results:
        print(f"RATIO config={r['name']} jaxalign_tok_s={r['jax_tok']:.1f} "
              f"trl_tok_s={r['trl_tok']:.1f} ratio={r['ratio']:.3f} "
              f"jaxalign_mfu={r['jax_mfu']:.3f} trl_mfu={r['trl_mfu']:.3f}")
    targets = {"bench-tiny": lambda r: [("jaxalign >= 5x TRL", r["ratio"] >= 5)],
               "bench-100m": lambda r: [("jaxalign >= 0.9x TRL", r["ratio"] >= 0.9),
                                        ("jaxalign MFU >= 60% of JAX peak", r["jax_mfu"] >= 0.6)]}
    for r in results:
        for label, ok in targets.get(r["name"], lambda r: [])(r):
            print(f"target {r['name']}: {label}: {'MET' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
