"""SPPO: Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675) on the iteration
driver, with iterative DPO and IPO (the paper's baselines) on the same phases.

    result = run_sppo(sppo_settings(config.sppo), policy=(cfg, params), tokenizer=tok,
                      splits=[prompts_1, prompts_2, prompts_3], preference=step, workdir=...,
                      config=config.to_dict(), optim=dict(optimizer="rmsprop", lr=5e-7, ...),
                      batch_size=64)

Iteration t = 0, 1, ... (the paper's iter1, iter2, ...) on prompt split t (splits are disjoint):
  grow   K samples per prompt from pi_t (official code: K = 5, temperature 0.7, top_p 0.9; the
         paper's text says temperature 1.0, top_p 1.0: set them to reproduce that reading),
  score  the preference step's K x K matrix per prompt, P[i, j] = P(y_i > y_j) with P[i, i] = 1/2
         (a Bradley-Terry link on a reward model's scores as the official code links PairRM's,
         an order-averaged pairwise judge, or the gym's oracles): each record gets its matrix
         row (`p_vs_0` ... `p_vs_<K-1>`) and its win rate against pi_t's own samples,
         `win_rate` = the row mean,
  build  one row per prompt as the official `compute_prob.py`: y_w = argmax, y_l = argmin of the
         win rate (first index on ties), `chosen_win_rate` P_w, `rejected_win_rate` P_l,
         `pair_win_rate` P(y_w > y_l). A prompt whose y_w and y_l are the same token ids (all K
         tied) trains nothing and is dropped, counted as `identical`. Exported as
         `dataset.jsonl` and `dataset.parquet` with the official column names (prompt, chosen
         and rejected as chat messages, chosen_probs = P(y_w > y_l), chosen_probs_win = P_w,
         chosen_probs_lose = P_l) plus id, chosen_text, rejected_text,
  train  the loss by registry name (`sppo.sppo`, `sppo.single`, `sppo.hard`; `dpo.sigmoid` or
         `dpo.ipo` for iterative DPO / IPO) against pi_t as the reference: a frozen copy of the
         iteration's starting weights, whose log-probs are precomputed once per iteration
         (`ref_logps.npz`). The schedule restarts every iteration, as the official scripts
         launch one training per iteration (RMSprop, lr 5e-7, linear decay with 10% warm-up,
         global batch 64, eta = 1000, 1 epoch: ceil(epochs * prompts / batch) steps, the
         split's prompts counted as the official code counts them, ties included);
         pi_{t+1} is the last step's policy. The loss log
         is the phase's metrics.jsonl, also written as `loss_log.parquet`.

Everything lands in `<workdir>/iter_<t>/{grow,score,build,train}/`; a killed run resumes from
the last committed chunk or checkpoint (`driver`). Known pitfall: with eta = 1000 the initial
loss is ~1e5 and the gradient norm ~1e6; the loss is computed in float32.
"""

from __future__ import annotations

import dataclasses
import io as _io
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxalign import io
from jaxalign.algorithms import driver as drv_lib
from jaxalign.algorithms.runner import Mapped, dataset_fingerprint, pair_weight
from jaxalign.checksum import tree_fingerprint
from jaxalign.data import BatchIterator, from_token_rows
from jaxalign.distributed import process_rows
from jaxalign.objectives import precompute_reference_logps, preference_objective
from jaxalign.objectives import with_reference_logps
from jaxalign.sampling import Sampler
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, Trainer

WIN_COLUMNS = ("chosen_win_rate", "rejected_win_rate", "pair_win_rate")
# (groups of K grow records of one prompt each, in order) -> P [N, K, K], P[i, j] = P(y_i > y_j)
PreferenceStep = Callable[[list[list[dict]]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class SppoSettings:
    iterations: int = 3
    samples: int = 5  # K per prompt
    temperature: float = 0.7  # the official code's; the paper's text: 1.0
    top_p: float = 0.9  # the official code's; the paper's text: 1.0
    max_new_tokens: int = 2048
    loss: str = "sppo.sppo"  # or sppo.single, sppo.hard; dpo.sigmoid / dpo.ipo: the baselines
    eta: float = 1000.0  # SPPO's eta (= 1/beta), for the sppo.* losses
    beta: float = 0.1  # the baselines' beta, for the dpo.* losses
    epochs: float = 1.0  # passes over an iteration's rows (official run scripts: 1)
    warmup_ratio: float = 0.1
    shard_size: int = 256  # prompts per grow shard
    score_chunk: int = 64  # prompts per scoring chunk (one batched preference call)
    sample_batch: int = 32  # prompts per compiled sampling batch
    checkpoint_every: int = 50

    def __post_init__(self):
        for name, low in (("iterations", 1), ("samples", 2), ("max_new_tokens", 1),
                          ("shard_size", 1), ("score_chunk", 1), ("sample_batch", 1),
                          ("checkpoint_every", 1)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
                why = " (SPPO compares a prompt's samples with each other)" * (name == "samples")
                raise ValueError(f"sppo.{name} must be an integer >= {low}, got {v!r}{why}")
        for name in ("eta", "beta", "epochs"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"sppo.{name} must be a positive number, got {v!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"sppo.temperature must be finite and >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sppo.top_p must lie in (0, 1], got {self.top_p}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"sppo.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        family = self.loss.split(".")[0]
        if family not in ("sppo", "dpo"):
            raise ValueError(f"sppo.loss: expected an sppo.* loss or a dpo.* baseline "
                             f"(dpo.sigmoid, dpo.ipo), got {self.loss!r}")

    @property
    def loss_kwargs(self) -> dict:
        """eta for SPPO's losses, beta for the DPO-family baselines."""
        return {"eta": self.eta} if self.loss.startswith("sppo.") else {"beta": self.beta}


def sppo_settings(section) -> SppoSettings:
    known = {f.name for f in dataclasses.fields(SppoSettings)}
    extra = set(section.keys()) - known
    if extra:
        raise ValueError(f"config.sppo: unknown keys {sorted(extra)}; known: {sorted(known)}")
    return SppoSettings(**dict(section.items()))


def check_splits(splits: Sequence[Sequence[dict]], iterations: int) -> None:
    """One prompt split per iteration, disjoint in prompt text and in prompt id."""
    if len(splits) != iterations:
        raise ValueError(f"SPPO needs one prompt split per iteration: {iterations} iterations, "
                         f"{len(splits)} splits")
    seen: dict[str, tuple[int, Any]] = {}
    for t, split in enumerate(splits):
        if not split:
            raise ValueError(f"prompt split {t} is empty")
        for p in split:
            for key in (f"id:{p['id']!r}", f"text:{json.dumps(p['prompt'], sort_keys=True)}"):
                if key in seen and seen[key][0] != t:
                    u, other = seen[key]
                    what = "id" if key.startswith("id:") else "text"
                    raise ValueError(
                        f"prompt splits {u} and {t} share a prompt (same {what}: id {other!r} "
                        f"and id {p['id']!r}); SPPO's iterations train on disjoint splits "
                        f"(the paper's three UltraFeedback parts)")
                seen.setdefault(key, (t, p["id"]))


def check_preferences(P, groups: list[list[dict]], K: int) -> np.ndarray:
    """The preference step's output as float64 [N, K, K] with P[i, i] = 1/2, or a ValueError
    naming the records (prompt id and grow file:line) it is wrong for."""
    where = lambda g: (f"prompt id {g[0]['id']!r} ({g[0].get('_loc', 'memory')})")  # noqa: E731
    try:
        P = np.asarray(P, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the preference step must return numbers [N, K, K]; for the records "
                         f"from {where(groups[0])} it returned {type(P).__name__} ({e})") from None
    want = (len(groups), K, K)
    if P.shape != want:
        raise ValueError(f"the preference step returned shape {list(P.shape)} for {len(groups)} "
                         f"prompts of K={K} samples (want {list(want)}: P[n, i, j] = P(y_i > "
                         f"y_j)); records from {where(groups[0])}")
    bad = ~(np.isfinite(P) & (P >= 0) & (P <= 1))
    if bad.any():
        n, i, j = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"the preference step gave P[{i}, {j}] = {P[n, i, j]} for "
                         f"{where(groups[n])}: probabilities must lie in [0, 1] "
                         f"({int(bad.sum())} entries of this chunk do not)")
    P = P.copy()
    P[:, np.arange(K), np.arange(K)] = 0.5  # a sample against itself (SPPO: P_ii = 1/2)
    return P


def preference_score_step(preference: PreferenceStep, K: int) -> drv_lib.ScoreStep:
    """The driver's score step: each record's matrix row `p_vs_<j>` and its `win_rate`."""

    def score(records: list[dict]) -> dict[str, np.ndarray]:
        groups = drv_lib.prompt_groups(records)
        short = next((g for g in groups if len(g) != K), None)
        if short is not None:
            raise ValueError(f"prompt id {short[0]['id']!r} has {len(short)} samples, not K={K} "
                             f"({short[0].get('_loc', 'memory')})")
        P = check_preferences(preference(groups), groups, K)
        cols = {"win_rate": P.mean(-1).reshape(-1)}  # SPPO: P(y > pi_t) over pi_t's K samples
        cols.update({f"p_vs_{j}": P[:, :, j].reshape(-1) for j in range(K)})
        return cols

    return score


def _messages(prompt, text: str) -> list[dict]:
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return turns + [{"role": "assistant", "content": text}]


def pair_rows(scored: Sequence[dict], K: int):
    """(training rows, their grow locations, export rows, identical count) of an iteration."""
    groups = drv_lib.prompt_groups(scored)
    P = np.array([[[r[f"p_vs_{j}"] for j in range(K)] for r in g] for g in groups], np.float64)
    # `losses.win_rates_from_matrix` (compute_prob.py's rule), in float64 on the host: in
    # float32 two win rates a few ulps apart could tie and pick another y_w than `win_rate` says
    win = P.mean(-1)
    chosen, rejected = win.argmax(-1), win.argmin(-1)  # first index on ties
    rows, locs, export, identical = [], [], [], 0
    for n, g in enumerate(groups):
        w, l = g[chosen[n]], g[rejected[n]]
        if w["tokens"] == l["tokens"]:
            identical += 1
            continue
        probs = {"chosen_win_rate": float(win[n, chosen[n]]),
                 "rejected_win_rate": float(win[n, rejected[n]]),
                 "pair_win_rate": float(P[n, chosen[n], rejected[n]])}
        rows.append({"prompt": w["prompt_tokens"], "chosen": w["tokens"], "rejected": l["tokens"],
                     **probs})
        locs.append(f"{w['_loc']} > {l['_loc']}")
        export.append({"id": str(w["id"]), "prompt": w["prompt"],
                       "chosen": _messages(w["prompt"], w["completion"]),
                       "rejected": _messages(w["prompt"], l["completion"]),
                       "chosen_probs": probs["pair_win_rate"],
                       "chosen_probs_win": probs["chosen_win_rate"],
                       "chosen_probs_lose": probs["rejected_win_rate"],
                       "chosen_text": w["completion"], "rejected_text": l["completion"]})
    return rows, locs, export, identical


def write_table(path: str, rows: list[dict]) -> None:
    """rows as committed `<path>.jsonl` and `<path>.parquet` (pandas / `datasets` load both)."""
    import pandas as pd
    io.write_jsonl(path + ".jsonl", rows)
    buf = _io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    io.write_committed(path + ".parquet", buf.getvalue())


def run_sppo(s: SppoSettings, *, policy: tuple, tokenizer, splits: Sequence[Sequence[dict]],
             preference: PreferenceStep, workdir: str, config: dict, optim: dict,
             batch_size: int, seed: int = 0, max_len: int = 1024, mesh=None,
             lean_logprobs: bool = False, start_over: bool = False,
             on_event: Callable[[str], Any] | None = None) -> dict:
    """Runs `s.iterations` iterations; returns {"iterations": [per-iteration rows], "policy"}.

    policy: (ModelConfig, params), pi_0. splits: one list of {"id", "prompt"} per iteration,
    disjoint. preference: see `PreferenceStep` (`sppo_gym.oracle_preference`,
    `run_sppo.reward_model_preference`, `run_sppo.judge_preference`). optim: make_optimizer
    arguments (total_steps = ceil(s.epochs x the split's prompts / batch_size) and warmup_steps
    = ceil(s.warmup_ratio x total_steps) are set per iteration). max_len: the sampler's cache
    and the rows' length.
    """
    check_splits(splits, s.iterations)
    event = on_event or (lambda name: None)
    drv = drv_lib.Driver(workdir, config, start_over=start_over, on_event=event)
    cfg, params0 = policy
    sampler = Sampler(cfg, params0, tokenizer, mesh=mesh, max_len=max_len,
                      batch_size=s.sample_batch)
    score = preference_score_step(preference, s.samples)
    objective = preference_objective(cfg, loss=s.loss, loss_kwargs=s.loss_kwargs,
                                     lean_logprobs=lean_logprobs, precomputed=True)
    optimizers, programs = {}, {}
    current = {"params": params0, "dir": None}  # pi_t, loaded lazily on resume

    def policy_params():
        if current["params"] is None:
            current["params"] = drv_lib.load_policy(current["dir"], params0)
        return current["params"]

    def optimizer_for(steps):
        if steps not in optimizers:
            warmup = min(math.ceil(s.warmup_ratio * steps), steps - 1)  # HF's warmup_ratio
            optimizers[steps] = make_optimizer(**{**optim, "total_steps": steps,
                                                  "warmup_steps": warmup})[0]
        return optimizers[steps]

    def train(d, t, ds, ref_params):
        # steps from the split's size, not the rows left after dropping ties: the official
        # pipeline keeps tied prompts (so its epoch is one step per batch of prompts), and every
        # iteration of a run then shares one schedule and one compiled step
        steps = max(1, math.ceil(s.epochs * len(splits[t]) / batch_size))
        table = precompute_reference_logps(
            cfg, ref_params, (pair_weight(b) for b in BatchIterator(
                ds, batch_size=batch_size, shuffle=False, num_epochs=1, **process_rows())),
            os.path.join(d, "ref_logps.npz"), dataset=dataset_fingerprint(ds), mesh=mesh)
        loop = LoopConfig(workdir=d, total_steps=steps, seed=seed + 1000 * t,
                          log_every=max(1, min(10, steps // 10)),
                          checkpoint_every=s.checkpoint_every, keep_checkpoints=1,
                          async_checkpoints=False, progress_bar=False)
        # the reference is a separate copy: the trainer donates (overwrites) its own params
        trainer = Trainer(loop, objective=objective, optimizer=optimizer_for(steps),
                          params=jax.tree.map(lambda x: x.copy(), ref_params), model_cfg=cfg,
                          mesh=mesh, programs=programs)
        it = Mapped(Mapped(BatchIterator(ds, batch_size=batch_size, seed=seed + t,
                                         **process_rows()), pair_weight),
                    lambda b: with_reference_logps(b, table))
        hand_on: dict = {}
        out = drv_lib.train_phase(d, trainer, it, select="last", on_event=event, hand_on=hand_on)
        logs = [json.loads(line)
                for line in io.read_text(os.path.join(d, "metrics.jsonl")).splitlines()]
        if jax.process_index() == 0:
            write_table(os.path.join(d, "loss_log"), logs)
        current["params"] = hand_on["params"]
        final = {k: v for k, v in (logs[-1] if logs else {}).items() if k.startswith("train/")}
        return {**out, "rows": len(ds), "reference": table.identity["reference"],
                "policy": tree_fingerprint(hand_on["params"]), "final": final}

    rows_out = []
    for t in range(s.iterations):
        start = policy_params()
        grown = drv.phase(t, "grow", lambda d: drv_lib.grow_policy(
            d, sampler, start, splits[t], s, seed=seed + t, on_event=event))
        records = drv_lib.read_records(drv.dir(t, "grow"), grown)
        scored_summary = drv.phase(t, "score", lambda d: drv_lib.score_phase(
            d, records, score, chunk_prompts=s.score_chunk, required=("win_rate",),
            on_event=event))
        scored = drv_lib.read_scored(drv.dir(t, "score"), scored_summary)
        rows, locs, export, identical = pair_rows(scored, s.samples)
        if not rows:
            raise ValueError(f"iteration {t}: every prompt's K={s.samples} samples tied (chosen "
                             f"and rejected the same tokens): nothing to train on")

        def build(d):
            if jax.process_index() == 0:
                write_table(os.path.join(d, "dataset"), export)
            return drv_lib.build_phase(d, rows, locs, {
                "identical": identical, "prompts": len(splits[t]),
                **{f"mean/{c}": float(np.mean([r[c] for r in rows])) for c in WIN_COLUMNS}},
                on_event=event)

        built = drv.phase(t, "build", build)
        rows_, locs_ = drv_lib.read_rows(drv.dir(t, "build"))
        ds = from_token_rows("preference", rows_, pad_id=sampler.pad_id, max_length=max_len,
                             columns={c: "float32" for c in WIN_COLUMNS},
                             vocab_size=cfg.vocab_size, locations=locs_)
        trained = drv.phase(t, "train", lambda d: train(d, t, ds, start))
        if current["params"] is start:  # the phase was done: pi_{t+1} is on disk
            current.update(params=None, dir=drv.dir(t, "train"))
        rows_out.append({"iteration": t, "dir": drv.dir(t, "train"), "rows": built["rows"],
                         "identical": built["identical"],
                         **{k: built[f"mean/{k}"] for k in WIN_COLUMNS},
                         "reference": trained["reference"], "policy": trained["policy"],
                         "steps": trained["steps"], **trained["final"]})
        event("iteration")
    drv.close()
    return {"iterations": rows_out, "policy": policy_params()}
