"""CGPO (Xu et al. 2024, arXiv 2409.20370): online RL over tasks, each with its own reward,
mixture of judges and constrained optimizer, in one update `w <- w + alpha sum_l rho_l g_l`
(Algorithm 2). Tasks and update rules: `cgpo_rules`.

    tasks = [CGPOTask("chat", chat_rows, score=rm, judges=[...], optimizer="crpg", kl_max=10),
             CGPOTask("math", math_rows, score=rm, judges=[math_judge], optimizer="crraft")]
    out = run_cgpo(CGPOSettings(steps=600), tasks, policy=(cfg, params), tokenizer=tok,
                   workdir="/tmp/cgpo", optim=dict(optimizer="adamw", lr=1e-6), seed=0)

Before the first step each task's baseline response a_bar is fixed (the rows' `baseline_tokens`,
or one sample of the reference at the task's seed), scored and judged once and kept in
`<workdir>/cgpo/baseline-<task>.jsonl`. One step t, for every task l (its prompts drawn from
(seed, l, epoch), its K samples keyed by (seed + t, prompt id)):
1. sample K completions per prompt from the current policy (the sampler holds the trainer's
   arrays: `Sampler.set_params`, no copy, no recompilation);
2. the reward `score(records)["reward"]` and every judge's verdict (violation: any fails); the
   calibrated reward sigma(r(s, a) - r(s, a_bar));
3. log pi_w and log pi_ref of every sample (and of a_bar, for CRRAFT) by one full forward pass;
4. the task's rule (`cgpo_rules.RULES`) gives each row a coefficient c_i = -d loss_l / d log pi_i;
5. one update on the rows of all tasks, row i of task l weighted by rho_l / sum(rho): the
   gradient is sum_l rho_l grad loss_l with rho normalised to sum 1.
Rows are padded to the sampler's `max_len` and their count to the data-parallel size (times
`micro_batches`, the update's gradient accumulation), so the train step compiles once. Several
processes: each samples, scores and judges its contiguous share of every task's prompts (and of
a_bar's) and packs its share of the rows; the rules' coefficients are computed on the task's
whole rollout (one gather of the per-row values), so the update and the metrics are the
single-process run's. Resume as `online.run_online`: a checkpoint every `checkpoint_every`
steps is all a restart needs (SIGKILL, then the same parameters bit for bit). Per-step metrics
under `rollout/`: per task `<task>/reward`, `calibrated_reward`, `violation` (any judge) and
`violation/<judge>`, `kl`, `kept`, `skipped` (eq. 14 and 17's skipped prompts), `loss`, the
score's other columns; seconds of sampling, scoring, judging and training.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxalign import distributed, io
from jaxalign.algorithms.cgpo_rules import CGPOTask, Rollout, check_tasks, coefficients
from jaxalign.algorithms.online import (check_score_columns, end_step, rollout_records,
                                        step_prompts)
from jaxalign.models import completion_logprobs
from jaxalign.objectives import policy_gradient_objective
from jaxalign.reward.judges import JudgeError, check_verdicts
from jaxalign.sampling import Sampler, completion_text
from jaxalign.sharding import batch_sharding, data_parallel_size, make_mesh
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, Trainer

__all__ = ["CGPOSettings", "CGPOTask", "run_cgpo"]


@dataclasses.dataclass(frozen=True)
class CGPOSettings:
    steps: int
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    checkpoint_every: int = 10
    sample_batch: int = 64  # prompts per sampler batch
    micro_batches: int = 1  # the update's rows in this many accumulated micro-batches

    def __post_init__(self):
        for name in ("steps", "max_new_tokens", "checkpoint_every", "sample_batch",
                     "micro_batches"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"cgpo.{name} must be an integer >= 1, got {v!r}")
        if not self.temperature > 0:
            raise ValueError(f"cgpo.temperature must be > 0, got {self.temperature!r}")


def judge_records(task: CGPOTask, records: list[dict]) -> np.ndarray:
    """bool [N, J]: every judge of the task on the records (JudgeError names a bad judge)."""
    n = len(records)
    if not task.judges:
        return np.ones((n, 0), bool)
    if any(r["completion"] is None or r["prompt"] is None for r in records):
        raise ValueError(f"CGPO task {task.name!r}: its judges read text: give the sampler a "
                         "tokenizer and every prompt row its 'prompt' text")
    args = ([r["prompt"] for r in records], [r["completion"] for r in records],
            [r["metadata"] for r in records])
    out = []
    for j in task.judges:
        try:
            v = check_verdicts(j.name, j(*args), n)
        except JudgeError as e:
            raise JudgeError(f"CGPO task {task.name!r}: {e}") from None
        out.append(v.passed.astype(bool))
    return np.stack(out, axis=1)


def _score(task: CGPOTask, records: list[dict], rows: list[dict], k: int) -> dict:
    return check_score_columns(task.score(records), len(records), rows, k)


def _baselines(task: CGPOTask, index: int, sampler: Sampler, s: CGPOSettings, seed: int,
               workdir: str) -> dict[str, dict]:
    """{prompt id: {"tokens", "reward", "passed"}} of a_bar, computed once and kept committed."""
    path = os.path.join(workdir, "cgpo", f"baseline-{task.name}.jsonl")
    if io.is_committed(path):
        got = {str(r["id"]): r for r in io.read_jsonl(path)}
        if set(got) == {str(r["id"]) for r in task.prompts}:
            return got
    # this process's share, topped up to the same count on every process (the sampler's batches
    # are collective) with fillers: a real prompt under an id of its own, dropped below
    rows, real = distributed.process_share(task.prompts, lambda j: {**task.prompts[0],
                                                                     "id": f"\0filler:{j}"})
    if task.baseline == "data":
        toks = [list(r["baseline_tokens"]) for r in rows]
        records = [{"id": r["id"], "prompt_tokens": list(r["prompt_tokens"]), "tokens": t,
                    "sample": 0, "prompt": r.get("prompt"),
                    "completion": (completion_text(sampler.tokenizer, r["prompt_tokens"], t)
                                   if sampler.tokenizer is not None else None),
                    "metadata": {**(r.get("metadata") or {}), "stop_reason": "stop"}}
                   for r, t in zip(rows, toks)]
    else:  # one sample of the reference (the sampler holds it now), keyed by (seed, task)
        out = sampler(prompt_ids=[r["prompt_tokens"] for r in rows],
                      ids=[r["id"] for r in rows], n=1, max_new_tokens=s.max_new_tokens,
                      temperature=s.temperature, top_p=s.top_p,
                      seed=(seed * 7919 + 104729 * (index + 1)) % 2**31)
        records = rollout_records(rows, out)
    reward = _score(task, records, rows, 1)["reward"]
    passed = judge_records(task, records).all(axis=1)
    mine = [{"id": r["id"], "tokens": rec["tokens"], "reward": float(x), "passed": bool(p)}
            for r, rec, x, p in list(zip(rows, records, reward, passed))[:real]]
    got = {str(r["id"]): r for part in distributed.gather_objects(mine) for r in part}
    if jax.process_index() == 0:
        io.write_jsonl(path, got.values())
    return got


def _pack(token_rows: list[tuple[list, list]], n_rows: int, max_len: int, pad_id: int) -> dict:
    """[n_rows, max_len] rows of (prompt, completion) token lists; rows past the list are
    padding (no tokens, weight 0)."""
    tokens = np.full((n_rows, max_len), pad_id, np.int32)
    mask = np.zeros((n_rows, max_len), bool)
    loss_mask = np.zeros((n_rows, max_len), bool)
    for i, (p, c) in enumerate(token_rows):
        n = len(p) + len(c)
        if n > max_len:
            raise ValueError(f"a prompt + completion of {n} tokens is longer than max_len "
                             f"{max_len}")
        tokens[i, :n] = np.concatenate([p, c]).astype(np.int32)
        mask[i, :n] = True
        loss_mask[i, len(p):n] = True
    weight = np.zeros(n_rows, np.float32)
    weight[:len(token_rows)] = 1.0
    return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask, "weight": weight}


def run_cgpo(s: CGPOSettings, tasks: Sequence[CGPOTask], *, policy: tuple, tokenizer,
             workdir: str, optim: dict, seed: int = 0, max_len: int = 128, mesh=None,
             ref_params=None, on_step: Callable[[int], Any] | None = None,
             programs: dict | None = None) -> dict:
    """Runs (or resumes) CGPO for `s.steps` steps; returns {"params", "history"} (the rollout
    metrics of the steps this call ran, one dict per step).

    policy: (ModelConfig, params), the start (also the reference unless `ref_params`).
    optim: `make_optimizer` arguments (total_steps set to `s.steps`). on_step(step) runs after
    each step (tests kill the process there).
    """
    check_tasks(tasks)
    cfg, params = policy
    mesh = mesh or make_mesh(data=-1)
    rho = np.array([t.rho for t in tasks], np.float64)
    rho = rho / rho.sum()
    needs_base = [t.optimizer == "crraft" for t in tasks]
    real = sum(t.prompts_per_step * (t.samples + b) for t, b in zip(tasks, needs_base))
    split = data_parallel_size(mesh) * s.micro_batches
    n_rows = -(-real // split) * split  # padded to the data-parallel size x micro-batches
    # several processes: each its contiguous share of every task's prompts, and of the rows
    shares = [distributed.process_slice(t.prompts_per_step, f"CGPO task {t.name!r}: "
                                        "prompts_per_step") for t in tasks]
    row_share = distributed.process_slice(n_rows, "CGPO's padded rows")
    local_rows = row_share.stop - row_share.start
    whole = distributed.gather  # every process's values, in process order
    optimizer, _ = make_optimizer(**{**optim, "total_steps": s.steps, "warmup_steps": min(
        optim.get("warmup_steps", 0), s.steps - 1)})
    ref = params if ref_params is None else ref_params
    loop = LoopConfig(workdir=workdir, total_steps=s.steps, seed=seed, log_every=1,
                      checkpoint_every=s.steps + 1, keep_checkpoints=2, progress_bar=False,
                      micro_batches=s.micro_batches)
    sampler = Sampler(cfg, ref, tokenizer, mesh=mesh, max_len=max_len,
                      batch_size=s.sample_batch)
    baselines = [_baselines(t, i, sampler, s, seed, workdir) for i, t in enumerate(tasks)]
    logps = jax.jit(lambda p, b: completion_logprobs(cfg, p, b["tokens"], b["mask"],
                                                     b["loss_mask"]).sum,
                    out_shardings=batch_sharding(mesh, 1))  # rows stay where they were
    history = []
    meta = {"cgpo": dataclasses.asdict(s), "tasks": [  # (judges may hold locks: no deepcopy)
        {f.name: getattr(t, f.name) for f in dataclasses.fields(t)
         if f.name not in ("prompts", "score", "judges")}
        | {"judges": [j.name for j in t.judges], "prompts": len(t.prompts)} for t in tasks]}
    with Trainer(loop, objective=policy_gradient_objective(cfg, clip_eps=None),
                 optimizer=optimizer, params=jax.tree.map(lambda x: x.copy(), params),
                 model_cfg=cfg, mesh=mesh, meta=meta, programs=programs) as t:
        for step in range(t.restore() + 1, s.steps + 1):
            t0 = time.perf_counter()
            sampler.set_params(t.params)
            m: dict[str, float] = {"sample_seconds": 0.0, "score_seconds": 0.0,
                                   "judge_seconds": 0.0}
            parts, new_tokens = [], 0
            for i, (task, base, mine) in enumerate(zip(tasks, baselines, shares)):
                a = time.perf_counter()
                rows = step_prompts(task.prompts, step, task.prompts_per_step, (seed, i))[mine]
                out = sampler(prompt_ids=[r["prompt_tokens"] for r in rows],
                              ids=[r["id"] for r in rows], n=task.samples,
                              max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                              top_p=s.top_p, seed=(seed + step) % 2**31)
                b = time.perf_counter()
                records = rollout_records(rows, out)
                cols = _score(task, records, rows, task.samples)
                c = time.perf_counter()
                verdicts = judge_records(task, records)
                d = time.perf_counter()
                m["sample_seconds"] += b - a
                m["score_seconds"] += c - b
                m["judge_seconds"] += d - c
                new_tokens += int(distributed.gather(out.lengths.reshape(-1)).sum())
                parts.append((task, rows, records, cols, verdicts, base))
            t1 = time.perf_counter()
            packed, spans = [], []
            for (task, rows, records, *_, base), nb in zip(parts, needs_base):
                start = len(packed)
                packed += [(r["prompt_tokens"], r["tokens"]) for r in records]
                if nb:  # a_bar's row after the samples (CRRAFT's fallback a*)
                    packed += [(r["prompt_tokens"], base[str(r["id"])]["tokens"]) for r in rows]
                spans.append((start, len(packed)))
            batch = _pack(packed, local_rows, max_len, sampler.pad_id)
            placed = distributed.put_rows(batch, mesh)
            old, ref_lp = (distributed.local_rows(logps(p, placed)).astype(np.float64)
                           for p in (t.params, ref))
            advantage = np.zeros(local_rows, np.float64)
            for w, (task, rows, records, cols, verdicts, base), (lo, hi), nb, mine in zip(
                    rho, parts, spans, needs_base, shares):
                p, k = task.prompts_per_step, task.samples
                # the task's whole rollout (every process's share, in order): each rule's
                # coefficients depend on the batch (its means), so all see all
                roll = Rollout(
                    rewards=whole(cols["reward"]).reshape(p, k),
                    baseline_rewards=whole([base[str(r["id"])]["reward"] for r in rows]),
                    passes=whole(verdicts.all(axis=1)).reshape(p, k),
                    baseline_passes=whole([base[str(r["id"])]["passed"] for r in rows]),
                    logps=whole(old[lo:lo + len(records)]).reshape(p, k),
                    ref_logps=whole(ref_lp[lo:lo + len(records)]).reshape(p, k),
                    baseline_logps=whole(old[lo + len(records):hi]) if nb else np.zeros(p),
                    lengths=whole([len(r["tokens"]) for r in records]).reshape(p, k))
                c_pk, c_base, loss, rule_m = coefficients(roll, task)
                advantage[lo:lo + len(records)] = w * c_pk[mine].reshape(-1)
                if nb:
                    advantage[lo + len(records):hi] = w * c_base[mine]
                m.update(_task_metrics(task, roll, {c: whole(v) for c, v in cols.items()},
                                       whole(verdicts), loss, rule_m))
            # the train step divides by the batch's total weight: every real row of every process
            batch.update(advantage=(advantage * real).astype(np.float32),
                         old_logps=old.astype(np.float32))
            t.step(batch)
            train = t.flush() or {}
            t2 = time.perf_counter()
            m.update(train_seconds=t2 - t1, step_seconds=t2 - t0,
                     sample_tokens_per_s=new_tokens / max(m["sample_seconds"], 1e-9),
                     train_tokens_per_s=float(whole(batch["mask"].sum(axis=1)).sum())
                     / max(t2 - t1, 1e-9))
            if "grad_norm" in train:
                m["grad_norm"] = train["grad_norm"]
            t.writer.write(step, m, prefix="rollout")
            history.append({"step": step, **m})
            end_step(t, step, last=s.steps, checkpoint_every=s.checkpoint_every,
                     on_step=on_step, workdir=workdir)
        return {"params": t.params, "history": history}


def _task_metrics(task: CGPOTask, r: Rollout, cols: dict, verdicts: np.ndarray, loss: float,
                  rule_m: dict) -> dict[str, float]:
    calib = 1.0 / (1.0 + np.exp(-(r.rewards - r.baseline_rewards[:, None])))
    m = {"calibrated_reward": float(calib.mean()), "violation": float(1 - r.passes.mean()),
         "kl": float((r.logps - r.ref_logps).mean()), "loss": loss,
         "length": float(r.lengths.mean()), **rule_m}
    m.update({f"violation/{j.name}": float(1 - verdicts[:, i].mean())
              for i, j in enumerate(task.judges)})
    m.update({k: float(v.mean()) for k, v in cols.items()})
    return {f"{task.name}/{k}": v for k, v in m.items()}
