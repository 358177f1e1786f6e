"""On-policy RL: every step samples K completions per prompt from the current policy, scores
them, computes advantages and updates; RLOO (Ahmadian et al. 2024, arXiv 2402.14740) is the
update here, the online baseline that stands in for the papers' PPO.

    out = run_online(online_settings(config.online), policy=(cfg, params), tokenizer=tok,
                     prompts=[{"id": 0, "prompt_tokens": [...]}, ...], score=score,
                     workdir="/tmp/rloo", optim=dict(optimizer="adamw", lr=1e-5), seed=0)

One step t:
1. the sampler gets the trainer's current weights (`Sampler.set_params`: the same arrays on the
   same mesh, no copy to the host, the compiled programs reused);
2. prompts: `prompts_per_step` of them, in an order drawn from (seed, epoch); K samples each,
   keyed by (seed + t, prompt id);
3. score(records) -> {"reward": [N], ...} (other columns, e.g. a gym's true reward, are logged);
4. log pi_old(y|x) and log pi_ref(y|x) of every completion by one full forward pass each
   (the same computation as the objective's, so the first pass's ratio is exactly 1);
   reward with the KL folded in, `R - beta (log pi_old - log pi_ref)`; RLOO's leave-one-out
   advantages over the K samples of a prompt (`losses.rloo`);
5. `passes` updates on the batch with the clipped policy gradient
   (`objectives.policy_gradient_objective`; `clip_eps=None`: plain REINFORCE).
Rows are padded to the sampler's `max_len`, so every step has the same shapes: the train step
and the log-prob pass compile once, the sampler once per prompt-length bucket.

Several processes: each samples, scores and computes the advantages of its own contiguous share
of every step's prompts (`prompts_per_step` a multiple of the process count; a prompt's K
samples stay on one process, so RLOO's baseline is local), and the trainer assembles the global
batch from every process's rows. The score step is called on each process's records (a
`RewardScorer` is collective: every process calls it once per step). Metrics are over the whole
batch (one gather of the per-row values); process 0 writes them.

Resume: the batch of step t depends on (seed, t) only and the sampling keys on (seed + t, id),
so a checkpoint (params, optimizer state, step: `jaxalign.train.Trainer`, every
`checkpoint_every` steps) is all a restart needs: a run killed at any moment (SIGKILL) and
started again ends with bit-identical parameters. SIGTERM saves and raises `Preempted`.
Per-step metrics go to `<workdir>/metrics.jsonl` under `rollout/` (numbered by update, like
the train rows): reward and every score column, KL, and seconds and tokens/s of sampling,
scoring and training.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxalign import distributed, losses
from jaxalign.models import completion_logprobs
from jaxalign.objectives import policy_gradient_objective
from jaxalign.sampling import Sampler
from jaxalign.sharding import batch_sharding, check_batch_rows, make_mesh
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, Preempted, Trainer


@dataclasses.dataclass(frozen=True)
class OnlineSettings:
    steps: int  # sample -> score -> update rounds
    prompts_per_step: int = 8
    samples: int = 4  # K, per prompt (RLOO needs >= 2)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    kl_coef: float = 0.05  # beta of the KL folded into the reward
    clip_eps: float | None = 0.2  # None: no clipping (REINFORCE)
    passes: int = 1  # updates per sampled batch
    checkpoint_every: int = 10  # steps
    sample_batch: int = 64  # prompts per sampler batch

    def __post_init__(self):
        for name, low in (("steps", 1), ("prompts_per_step", 1), ("samples", 2),
                          ("max_new_tokens", 1), ("passes", 1), ("checkpoint_every", 1),
                          ("sample_batch", 1)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
                why = " (RLOO's leave-one-out baseline needs 2)" if name == "samples" else ""
                raise ValueError(f"online.{name} must be an integer >= {low}{why}, got {v!r}")
        if not self.kl_coef >= 0:
            raise ValueError(f"online.kl_coef must be >= 0, got {self.kl_coef!r}")
        if self.clip_eps is not None and not self.clip_eps > 0:
            raise ValueError(f"online.clip_eps must be > 0 or None, got {self.clip_eps!r}")
        if not self.temperature > 0:
            raise ValueError(f"online.temperature must be > 0 (on-policy sampling), got "
                             f"{self.temperature!r}")


def online_settings(section) -> OnlineSettings:
    """OnlineSettings from a config section (a dict or ConfigDict); unknown keys are errors."""
    d = dict(section)
    known = {f.name for f in dataclasses.fields(OnlineSettings)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"config.online: unknown keys {unknown}; known: {sorted(known)}")
    return OnlineSettings(**d)


def step_prompts(prompts: Sequence[dict], step: int, per_step: int,
                 seed: int | Sequence[int]) -> list[dict]:
    """The prompts of step `step` (1-based): the next `per_step` of an endless stream of epochs,
    each a permutation drawn from (seed, epoch) (`seed` an int or a tuple of them, e.g. (seed,
    task)). Depends on (seed, step) alone."""
    n, out, key = len(prompts), [], [int(x) for x in np.atleast_1d(seed)]
    for g in range((step - 1) * per_step, step * per_step):
        epoch, pos = divmod(g, n)
        order = np.random.default_rng([*key, epoch]).permutation(n)
        out.append(prompts[int(order[pos])])
    return out


def rollout_rows(prompt_rows: list[dict], out, max_len: int, pad_id: int) -> dict:
    """[P * K, max_len] prompt + completion rows (right-padded), completion tokens in loss_mask."""
    p, k = out.lengths.shape
    tokens = np.full((p * k, max_len), pad_id, np.int32)
    mask = np.zeros((p * k, max_len), bool)
    loss_mask = np.zeros((p * k, max_len), bool)
    for i, row in enumerate(prompt_rows):
        prompt = list(row["prompt_tokens"])
        for j in range(k):
            completion = out.tokens[i, j, :out.lengths[i, j]]
            r, n = i * k + j, len(prompt) + len(completion)
            tokens[r, :n] = np.concatenate([prompt, completion])
            mask[r, :n] = True
            loss_mask[r, len(prompt):n] = True
    return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def rollout_records(prompt_rows: list[dict], out) -> list[dict]:
    """The score step's records, prompt-major: {"id", "prompt_tokens", "tokens" (completion,
    stop token included), "sample", "prompt" (the row's, or None), "completion" (text without
    the stop token; None without a tokenizer), "metadata" (the row's, with "stop_reason")}."""
    k = out.lengths.shape[1]
    return [{"id": r["id"], "prompt_tokens": list(r["prompt_tokens"]),
             "tokens": out.tokens[i, j, :out.lengths[i, j]].tolist(), "sample": j,
             "prompt": r.get("prompt"),
             "completion": out.texts[i][j] if out.texts is not None else None,
             "metadata": {**(r.get("metadata") or {}), "stop_reason": str(out.stop_reason[i, j])}}
            for i, r in enumerate(prompt_rows) for j in range(k)]


def check_score_columns(cols, n: int, prompt_rows: list[dict], k: int) -> dict[str, np.ndarray]:
    """The score step's columns as float arrays [n]; a missing reward, a wrong shape or a value
    that is not finite is an error naming the record (prompt id, sample)."""
    if not isinstance(cols, dict) or "reward" not in cols:
        got = sorted(cols) if isinstance(cols, dict) else type(cols).__name__
        raise ValueError(f"the score step must return {{'reward': [N], ...}}, got {got}")
    out = {}
    for name, v in cols.items():
        v = np.asarray(v, np.float64)
        if v.shape != (n,):
            raise ValueError(f"score column {name!r} has shape {v.shape} for {n} completions")
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"score column {name!r} is {v[i]} for prompt id "
                             f"{prompt_rows[i // k]['id']!r}, sample {i % k} ({bad.size} of "
                             f"{n} not finite)")
        out[name] = v
    return out


def run_online(s: OnlineSettings, *, policy: tuple, tokenizer, prompts: Sequence[dict],
               score: Callable[[list[dict]], dict], workdir: str, optim: dict, seed: int = 0,
               max_len: int = 128, mesh=None, ref_params=None, lean_logprobs: bool = False,
               on_step: Callable[[int], Any] | None = None, programs: dict | None = None
               ) -> dict:
    """Runs (or resumes) RLOO for `s.steps` steps; returns {"params", "history"} (the rollout
    metrics of the steps this call ran).

    policy: (ModelConfig, params), the starting weights (also the reference unless
    `ref_params`). prompts: rows {"id", "prompt_tokens", "prompt"?} (ids unique: they key the
    samples). score: (records {"id", "prompt_tokens", "tokens" (completion, stop token
    included), "sample", "prompt" (the row's, or None), "completion" (text, without the stop
    token; None without a tokenizer)}) -> {"reward": [N], other columns...}. optim:
    `make_optimizer` arguments (its total_steps is set to the number of updates). on_step(step)
    runs after each step (tests kill the process there).
    """
    if not prompts:
        raise ValueError("online RL needs prompts")
    ids = [str(r["id"]) for r in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"prompt id {dup!r} appears more than once: ids key the samples")
    cfg, params = policy
    mesh = mesh or make_mesh(data=-1)
    n_rows = s.prompts_per_step * s.samples
    check_batch_rows(n_rows, mesh, 1, f"online.prompts_per_step x online.samples "
                     f"({s.prompts_per_step} x {s.samples})")
    mine = distributed.process_slice(s.prompts_per_step, "online.prompts_per_step")
    updates = s.steps * s.passes
    optimizer, _ = make_optimizer(**{**optim, "total_steps": updates,
                                     "warmup_steps": min(optim.get("warmup_steps", 0),
                                                         updates - 1)})
    ref = params if ref_params is None else ref_params  # (the trainer gets a copy: it donates)
    objective = policy_gradient_objective(cfg, clip_eps=s.clip_eps, lean_logprobs=lean_logprobs)
    loop = LoopConfig(workdir=workdir, total_steps=updates, seed=seed, log_every=s.passes,
                      checkpoint_every=updates + 1, keep_checkpoints=2, progress_bar=False)
    sampler = Sampler(cfg, params, tokenizer, mesh=mesh, max_len=max_len,
                      batch_size=s.sample_batch)
    logps = jax.jit(lambda p, b: completion_logprobs(cfg, p, b["tokens"], b["mask"],
                                                     b["loss_mask"], lean=lean_logprobs).sum,
                    out_shardings=batch_sharding(mesh, 1))  # rows stay where they were
    history = []
    with Trainer(loop, objective=objective, optimizer=optimizer,
                 params=jax.tree.map(lambda x: x.copy(), params), model_cfg=cfg,
                 mesh=mesh, meta={"online": dataclasses.asdict(s)}, programs=programs) as t:
        done = t.restore()
        if done % s.passes:
            raise ValueError(f"{workdir}: the checkpoint of update {done} is not at the end of "
                             f"a step of {s.passes} passes (was online.passes changed?)")
        for step in range(done // s.passes + 1, s.steps + 1):
            t0 = time.perf_counter()
            sampler.set_params(t.params)  # the trainer's arrays, where they are
            rows = step_prompts(prompts, step, s.prompts_per_step, seed)[mine]
            out = sampler(prompt_ids=[r["prompt_tokens"] for r in rows],
                          ids=[r["id"] for r in rows], n=s.samples,
                          max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                          top_p=s.top_p, seed=(seed + step) % 2**31)
            t1 = time.perf_counter()
            records = rollout_records(rows, out)
            cols = check_score_columns(score(records), len(records), rows, s.samples)
            t2 = time.perf_counter()
            batch = rollout_rows(rows, out, max_len, sampler.pad_id)
            placed = distributed.put_rows(batch, mesh)
            old, ref_lp = (distributed.local_rows(logps(p, placed)).astype(np.float64)
                           for p in (t.params, ref))
            kl = old - ref_lp  # log pi_old(y|x) - log pi_ref(y|x): the sequence KL estimate
            total = cols["reward"] - s.kl_coef * kl
            adv = np.asarray(losses.rloo.rloo_advantages(  # each prompt's K rows: this process's
                rewards_NxK=total.reshape(len(rows), s.samples))).reshape(-1)
            batch.update(advantage=adv.astype(np.float32), old_logps=old.astype(np.float32),
                         weight=np.ones(len(records), np.float32))
            for _ in range(s.passes):
                t.step(batch)
            train = t.flush() or {}
            t3 = time.perf_counter()
            # the metrics of the whole batch: every process's rows (one gather of [rows] each)
            cols = {k: distributed.gather(v) for k, v in cols.items()}
            kl, total, lengths, row_tokens = (distributed.gather(x) for x in (
                kl, total, out.lengths.reshape(-1), batch["mask"].sum(axis=1)))
            new_tokens = int(lengths.sum())
            m = {**{f"{k}": float(v.mean()) for k, v in cols.items()},
                 "kl": float(kl.mean()), "reward_with_kl": float(total.mean()),
                 "length": float(lengths.mean()), "sample_seconds": t1 - t0,
                 "sample_tokens_per_s": new_tokens / max(t1 - t0, 1e-9),
                 "score_seconds": t2 - t1, "train_seconds": t3 - t2,
                 "train_tokens_per_s": float(row_tokens.sum()) * s.passes / max(t3 - t2,
                                                                                1e-9)}
            if "ratio" in train:
                m["ratio"] = train["ratio"]
            t.writer.write(step * s.passes, m, prefix="rollout")
            history.append({"step": step, **m})
            end_step(t, step, last=s.steps, checkpoint_every=s.checkpoint_every,
                     on_step=on_step, workdir=workdir)
        return {"params": t.params, "history": history}


def end_step(t: Trainer, step: int, *, last: int, checkpoint_every: int, on_step, workdir: str
             ) -> None:
    """After an online step's update: `on_step`, then a checkpoint every `checkpoint_every`
    steps, at the last step and on preemption (then `Preempted` once it is on disk)."""
    if on_step is not None:
        on_step(step)
    stop = t.preempted(step)
    if step % checkpoint_every == 0 or step == last or stop:
        t.save({"online_step": step})
    if stop:
        t.ckpt.wait()
        raise Preempted(step, workdir)
