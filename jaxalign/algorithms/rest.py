"""ReST: Reinforced Self-Training (Gulcehre et al. 2023, arXiv 2308.08998) on the iteration driver.

    result = run_rest(rest_settings(config.rest), config, policy=(cfg, params), tokenizer=tok,
                      data=D, heldout=prompts, score=score_step, workdir=...)

Iteration 0 is BC (G=0, I=0): supervised fine-tuning on the original dataset D from the
starting weights. Each grow step g = 1..G then
  grow     n samples per prompt of D from the current policy (temperature 0.8 by default),
  score    every sample and every row of D (D is kept in D_g) by the score step: a raw reward
           per record, normalised to [0, 1] by a named normalisation ("sigmoid": sigma(r), or
           "percentile": the rank among the prompt's own records; `jaxalign.reward.scoring`),
  improve  I + 1 fine-tunes, each from the previous one's policy with a lower learning rate
           (lr * lr_decay^i): step 0 on all of D_g (tau = -inf), steps i >= 1 on the rows with
           normalised reward > tau_i, the thresholds of `thresholds` in order that lie above
           the mean normalised reward of D_g (or, with threshold_mode="source_percentile", each
           source's own percentile of `percentiles`); the loss is `objectives.rest_objective`
           (behaviour cloning through the loss registry). Each improve step keeps its
           checkpoint with the best held-out reward-model score (`select="best"`, as the paper).
Only the final policy of a grow step feeds the next grow. A threshold that no row passes is
skipped and counted (`skipped` on the grow step's last stage row), as is one not above the
mean of D_g (global thresholds).

Everything lands in `<workdir>/iter_<g>/`: grow shards, scored records, each improve step's
rows and training run (metrics.jsonl, checkpoints), and the policy it hands on. The stage
table (`stages`) has each stage's held-out score at its selected checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxalign import distributed
from jaxalign.algorithms import driver as drv_lib
from jaxalign.algorithms.runner import Mapped
from jaxalign.data import BatchIterator, from_token_rows
from jaxalign.objectives import rest_objective, token_weight
from jaxalign.reward.scoring import percentile_rank, sigmoid_scale
from jaxalign.sampling import Sampler, completion_text
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, Trainer

NORMALIZATIONS = {"sigmoid": lambda r, groups: sigmoid_scale(r), "percentile": percentile_rank}
PAPER_THRESHOLDS = (0.7, 0.8, 0.9, 0.95, 0.99)
# tau of the steps that keep every row (BC, improve step 0): the lowest float32, a finite
# stand-in for -inf (a dataset column must be finite)
KEEP_ALL = float(np.finfo(np.float32).min)


@dataclasses.dataclass(frozen=True)
class RestSettings:
    grow_steps: int = 2  # G
    improve_steps: int = 3  # I: improve steps after the one on all of D_g
    samples: int = 4  # n per prompt
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 64
    normalize: str = "sigmoid"
    threshold_mode: str = "global"  # or "source_percentile"
    thresholds: tuple[float, ...] = PAPER_THRESHOLDS
    percentiles: tuple[float, ...] = (50.0, 75.0, 90.0, 95.0, 99.0)
    bc_steps: int = 100
    improve_train_steps: int = 100
    lr_decay: float = 0.5
    select: str = "best"
    loss: str = "rest.thresholded_nll"  # by registry name: (policy_logps, rewards, threshold)
    eval_every: int = 25
    eval_samples: int = 2  # per held-out prompt
    shard_size: int = 256  # prompts per grow shard
    score_chunk: int = 64  # prompts per scoring chunk
    sample_batch: int = 32  # prompts per compiled sampling batch

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"rest.normalize: expected one of {sorted(NORMALIZATIONS)}, got "
                             f"{self.normalize!r}")
        if self.threshold_mode not in ("global", "source_percentile"):
            raise ValueError(f"rest.threshold_mode: expected 'global' or 'source_percentile', "
                             f"got {self.threshold_mode!r}")
        for name in ("thresholds", "percentiles"):
            v = list(getattr(self, name))
            bad = next((i for i in range(1, len(v)) if not v[i] > v[i - 1]), None)
            if bad is not None:
                raise ValueError(f"rest.{name} must increase strictly (ReST's tau_1 < tau_2 < "
                                 f"...): entry {bad} is {v[bad]} after {v[bad - 1]}")
        if any(not 0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"rest.thresholds are on the normalised [0, 1] reward scale, got "
                             f"{list(self.thresholds)}")
        if any(not 0.0 <= p <= 100.0 for p in self.percentiles):
            raise ValueError(f"rest.percentiles must lie in [0, 100], got "
                             f"{list(self.percentiles)}")
        for name, low in (("grow_steps", 0), ("improve_steps", 0), ("samples", 1),
                          ("max_new_tokens", 1), ("bc_steps", 0), ("improve_train_steps", 1),
                          ("eval_every", 0), ("eval_samples", 1), ("shard_size", 1),
                          ("score_chunk", 1), ("sample_batch", 1)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
                raise ValueError(f"rest.{name} must be an integer >= {low}, got {v!r}")
        if not (np.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"rest.temperature must be finite and >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"rest.top_p must lie in (0, 1], got {self.top_p}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"rest.lr_decay (each improve step's learning-rate factor) must lie"
                             f" in (0, 1], got {self.lr_decay}")


def rest_settings(section) -> RestSettings:
    known = {f.name for f in dataclasses.fields(RestSettings)}
    extra = set(section.keys()) - known
    if extra:
        raise ValueError(f"config.rest: unknown keys {sorted(extra)}; known: {sorted(known)}")
    return RestSettings(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                           for k, v in section.items()})


def data_records(rows: Sequence[dict], tokenizer) -> list[dict]:
    """D as grow-like records: {"id", "prompt", "prompt_tokens", "tokens", "completion",
    "sample": -1, "origin": "data"}, from rows of {"id", "prompt", "prompt_tokens", "tokens"}."""
    out = []
    for i, r in enumerate(rows):
        text = r.get("completion")
        if text is None and tokenizer is not None:
            text = completion_text(tokenizer, r["prompt_tokens"], r["tokens"])
        out.append({"id": r["id"], "prompt": r["prompt"], "prompt_tokens": list(r["prompt_tokens"]),
                    "tokens": list(r["tokens"]), "length": len(r["tokens"]),
                    "completion": text, "sample": -1, "origin": "data", "_loc": f"D row {i}"})
    return out


def with_data(grown: Sequence[dict], data: Sequence[dict]) -> list[dict]:
    """D_g = samples + D, each prompt's records together (its samples, then its D rows)."""
    by_id: dict[Any, list[dict]] = {}
    order: list = []
    for r in list(grown) + list(data):
        key = str(r["id"])
        if key not in by_id:
            by_id[key] = []
            order.append(key)
        by_id[key].append(r)
    return [r for key in order for r in by_id[key]]


def normalise(records: Sequence[dict], how: str) -> np.ndarray:
    r = np.array([x["reward"] for x in records], np.float64)
    return np.asarray(NORMALIZATIONS[how](r, [str(x["id"]) for x in records]), np.float32)


def improve_thresholds(s: RestSettings, scores: np.ndarray, sources: np.ndarray):
    """[(name, per-record tau [N] or None for all rows, label)] of one grow step's improve
    steps, and how many were skipped because their threshold is not above the mean."""
    steps = [("improve_0", None, "all of D_g")]
    if s.threshold_mode == "global":
        mean = float(scores.mean())
        above = [t for t in s.thresholds if t > mean]
        for i, tau in enumerate(above[:s.improve_steps], 1):
            steps.append((f"improve_{i}", np.full(scores.shape, tau, np.float32), f"tau={tau}"))
        return steps, s.improve_steps - min(len(above), s.improve_steps)
    for i, p in enumerate(s.percentiles[:s.improve_steps], 1):
        tau = np.full(scores.shape, np.inf, np.float32)
        for src in np.unique(sources):
            rows = sources == src
            tau[rows] = np.percentile(scores[rows], p)  # ReST: per-source percentile
        steps.append((f"improve_{i}", tau, f"p{p:g}"))
    return steps, s.improve_steps - min(len(s.percentiles), s.improve_steps)


def improve_datasets(s: RestSettings, scored: Sequence[dict], iteration: int):
    """The datasets of one iteration's training stages, and how many steps were skipped.

    -> ([(name, label, rows, locations)], skipped): rows are sft token-id rows with the
    normalised `reward` and the row's `threshold`; BC (iteration 0) trains on every row.
    A step whose threshold no row passes, or (global mode) that has no threshold above the
    mean, is skipped and counted.
    """
    scores = normalise(scored, s.normalize)
    sources = np.array([_source(r["id"]) for r in scored], np.int64)
    if iteration == 0:
        plan, skipped = [("bc", None, "D")], 0
    else:
        plan, skipped = improve_thresholds(s, scores, sources)
    out = []
    for name, tau, label in plan:
        tau = np.full(len(scored), KEEP_ALL, np.float32) if tau is None else tau
        keep = scores > tau  # ReST: 1{R(x, y) > tau}
        if not keep.any():  # documented skip: no row passes this threshold
            skipped += 1
            continue
        rows = [{"prompt": r["prompt_tokens"], "completion": r["tokens"], "reward": float(x),
                 "threshold": float(th)} for r, x, th, k in zip(scored, scores, tau, keep) if k]
        out.append((name, label, rows, [r["_loc"] for r, k in zip(scored, keep) if k]))
    return out, skipped


def run_rest(s: RestSettings, *, policy: tuple, tokenizer, data: Sequence[dict],
             heldout: Sequence[dict], score: drv_lib.ScoreStep, workdir: str, config: dict,
             optim: dict, batch_size: int, seed: int = 0, max_len: int = 128, mesh=None,
             lean_logprobs: bool = False, start_over: bool = False,
             on_event: Callable[[str], Any] | None = None) -> dict:
    """Runs BC and G grow steps of I + 1 improve steps; returns {"stages": [...], "policy"}.

    policy: (ModelConfig, params), the starting weights. data: D as rows of {"id", "prompt",
    "prompt_tokens", "tokens"} (token ids; tokens with the EOS). heldout: {"id", "prompt"} rows
    for the best-checkpoint choice. score: the score step, (records) -> {"reward": [N], ...}
    (other columns, e.g. a gym's true reward, are kept and averaged too). optim: make_optimizer
    arguments (lr is the BC and first improve step's). config: the run's whole config (the
    restart check compares it). lean_logprobs: log-probs from hidden states in chunks (no
    [B, T, V] logits; for large vocabularies). on_event: see `driver.Driver`.
    """
    if not data:
        raise ValueError("ReST needs a non-empty dataset D (its prompts are the grow prompts)")
    if not heldout:
        raise ValueError("ReST needs held-out prompts (the best checkpoint is chosen on them)")
    event = on_event or (lambda name: None)
    drv = drv_lib.Driver(workdir, config, start_over=start_over, on_event=event)
    cfg, params = policy
    sampler = Sampler(cfg, params, tokenizer, mesh=mesh, max_len=max_len,
                      batch_size=s.sample_batch)
    D = data_records(data, tokenizer)
    prompts = list({str(r["id"]): {"id": r["id"], "prompt": r["prompt"]}
                    for r in data}.values())  # one per prompt of D
    held = [{"id": p.get("id", i), "prompt": p["prompt"]} for i, p in enumerate(heldout)]
    current = {"params": params, "dir": None}  # the policy, loaded lazily on resume
    # one objective, one optimizer per (lr, steps), one compiled step for all stages that share
    # them (the threshold is a batch column, not a constant of the program)
    objective = rest_objective(cfg, loss=s.loss, lean_logprobs=lean_logprobs)
    optimizers, programs = {}, {}

    def optimizer_for(lr, steps):
        if (lr, steps) not in optimizers:
            optimizers[lr, steps] = make_optimizer(**{
                **optim, "lr": lr, "total_steps": steps,
                "warmup_steps": min(optim.get("warmup_steps", 0), steps - 1)})[0]
        return optimizers[lr, steps]

    def policy_params():
        if current["params"] is None:
            current["params"] = drv_lib.load_policy(current["dir"], params)
        return current["params"]

    def evaluate(p) -> dict:
        """The score columns' means over the held-out prompts' samples (several processes:
        each samples and scores its share, topped up with fillers; the means are of all)."""
        sampler.set_params(p)
        mine, real = distributed.process_share(held, lambda j: {**held[0],
                                                                "id": f"\0filler:{j}"})
        out = sampler([h["prompt"] for h in mine], ids=[h["id"] for h in mine],
                      n=s.eval_samples, max_new_tokens=s.max_new_tokens,
                      temperature=s.temperature, top_p=s.top_p, seed=seed + 7_777)
        first = jax.process_index() * len(mine)  # the share's first held-out prompt
        recs = [{"id": h["id"], "prompt": h["prompt"], "prompt_tokens": out.prompt_tokens[i],
                 "tokens": out.tokens[i, j, :out.lengths[i, j]].tolist(),
                 "completion": out.texts[i][j], "sample": j,
                 "_loc": f"held-out prompt {first + i}"}
                for i, h in enumerate(mine) for j in range(s.eval_samples)]
        cols = score(recs)
        return {k: float(np.mean(distributed.gather_real(v, real * s.eval_samples)))
                for k, v in cols.items()}

    def train_stage(t, name, rows, locs, lr, steps, tau_label):
        built = drv.phase(t, f"build_{name}", lambda d: drv_lib.build_phase(
            d, rows, locs, {"threshold": tau_label}, on_event=event))
        rows_, locs_ = drv_lib.read_rows(drv.dir(t, f"build_{name}"))
        ds = from_token_rows("sft", rows_, pad_id=sampler.pad_id, max_length=max_len,
                             columns={"reward": "float32", "threshold": "float32"},
                             vocab_size=cfg.vocab_size,
                             locations=locs_)
        hand_on: dict = {}

        def fn(d):
            loop = LoopConfig(workdir=d, total_steps=steps, seed=seed + 1000 * t,
                              eval_every=s.eval_every, checkpoint_every=s.eval_every,
                              keep_checkpoints=1, log_every=max(1, s.eval_every // 5),
                              best_metric="eval/reward" if s.select == "best" else None,
                              async_checkpoints=False, progress_bar=False)
            trainer = Trainer(loop, objective=objective, optimizer=optimizer_for(lr, steps),
                              params=policy_params(), model_cfg=cfg, mesh=mesh,
                              evaluate_fn=evaluate, programs=programs)
            it = Mapped(BatchIterator(ds, batch_size=batch_size, seed=seed + t,
                                      **distributed.process_rows()), token_weight)
            return drv_lib.train_phase(d, trainer, it, select=s.select, on_event=event,
                                       hand_on=hand_on)

        trained = drv.phase(t, f"train_{name}", fn)
        current.update(params=hand_on.get("params"), dir=drv.dir(t, f"train_{name}"))
        return {"iteration": t, "stage": name, "dir": drv.dir(t, f"train_{name}"),
                "rows": built["rows"], "threshold": tau_label, "lr": lr,
                "selected_step": trained["selected_step"],
                **{k: v for k, v in trained["selected_eval"].items() if k != "step"}}

    stages = []
    for t in range(s.grow_steps + 1):
        if t == 0:  # BC: D alone, scored for the record (every row trains)
            records = D
        else:
            grown = drv.phase(t, "grow", lambda d: drv_lib.grow_policy(
                d, sampler, policy_params(), prompts, s, seed=seed + t, on_event=event))
            records = with_data(drv_lib.read_records(drv.dir(t, "grow"), grown), D)
        scored_summary = drv.phase(t, "score", lambda d: drv_lib.score_phase(
            d, records, score, chunk_prompts=s.score_chunk, required=("reward",),
            on_event=event))
        scored = drv_lib.read_scored(drv.dir(t, "score"), scored_summary)
        plan, skipped = improve_datasets(s, scored, t)
        mean_score = float(normalise(scored, s.normalize).mean())
        for name, label, rows, locs in plan:
            i = 0 if name == "bc" else int(name.split("_")[1])
            lr = optim["lr"] * s.lr_decay ** i
            steps = s.bc_steps if t == 0 else s.improve_train_steps
            row = train_stage(t, name, rows, locs, lr, steps, label)
            stages.append({**row, "mean_score_D_g": mean_score,
                           "label": "BC" if t == 0 else f"G{t}I{i}"})
        stages[-1]["skipped"] = skipped
        event("iteration")
    drv.close()  # (on an error, the driver releases the workdir when it is collected)
    return {"stages": stages, "policy": policy_params()}


def _source(prompt_id) -> int:
    """A prompt id as a source index (ints as they are; other ids hashed stably)."""
    import zlib
    return int(prompt_id) if isinstance(prompt_id, int) else zlib.crc32(str(prompt_id).encode())

