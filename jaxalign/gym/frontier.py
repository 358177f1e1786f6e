"""The DPO reward-vs-KL frontier on the gym (the analogue of the DPO paper's Figure 2).

    python -m jaxalign --config experiments/dpo_frontier.py:smoke --workdir results/dpo_frontier

Reference samples on fresh text prompts are labelled by a Bradley-Terry oracle over the true
task reward (with label noise); DPO (`jaxalign.objectives.preference_objective` through
`jaxalign.train.trainer.train`) is trained from the reference at each beta; best-of-N sampling
of the reference (selected by the true reward; KL = log N - (N-1)/N, the usual analytic value)
is the baseline. Every point goes through the evaluation suite; the run writes `frontier.md`,
`frontier.json` and `frontier.png` (reward vs KL) under the workdir.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from jaxalign.algorithms.runner import Mapped, pair_weight
from jaxalign.data import BatchIterator
from jaxalign.gym import oracles, tasks
from jaxalign.gym.evaluate import EvalConfig, Suite, markdown_table
from jaxalign.gym.policy import ReferenceConfig, reference_policy
from jaxalign.objectives import preference_objective
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, train

COLUMNS = ["method", "param", "reward", "kl", "win_rate", "violation/any", "distinct_2",
           "length"]


def train_dpo(ref, train_ds, *, beta: float, loss: str = "dpo.sigmoid", **kw):
    """DPO from the reference on a preference dataset; returns the final params."""
    return train_preference(ref, train_ds, loss=loss, loss_kwargs={"beta": beta}, **kw)


def train_preference(ref, train_ds, *, loss: str, loss_kwargs: dict, workdir: str, steps: int,
                     batch_size: int, lr: float, seed: int, with_reference: bool = True):
    """A preference loss from the reference's weights (AdamW, 10% warmup, linear decay);
    `with_reference=False` for reference-free losses (GenARM's ARM). Returns the params."""
    it = Mapped(BatchIterator(train_ds, batch_size=batch_size, seed=seed), pair_weight)
    objective = preference_objective(ref.model_cfg, loss=loss, loss_kwargs=loss_kwargs,
                                     ref_params=ref.params if with_reference else None)
    optimizer, _ = make_optimizer(optimizer="adamw", lr=lr, warmup_steps=max(steps // 10, 1),
                                  decay="linear", total_steps=steps, grad_clip=10.0)
    loop = LoopConfig(workdir=workdir, total_steps=steps, seed=seed, checkpoint_every=steps,
                      keep_checkpoints=1, async_checkpoints=False, progress_bar=False)
    state = train(loop, objective=objective, optimizer=optimizer, params=ref.params,
                  model_cfg=ref.model_cfg, train_iter=it)
    return state.params


def best_of_n_sweep(suite: Suite, score_fn, ns, seed: int = 77) -> list[tuple[int, list]]:
    """Best-of-N of the reference over a sweep of N, for the frontier (one sampling run for all
    N; `jaxalign.sampling.best_of_n` is the decoding method for any policy).

    [(N, completions)]: sample j of each prompt is the best (by `score_fn(prompts,
    completions) -> [B]`, first on ties) of its own N candidates (the first N of max(ns))."""
    k, m = suite.cfg.samples, max(ns)
    cands, _ = suite.sample(suite.ref.params, n=k * m, seed=seed)
    flat_p = [p for p in suite.prompts for _ in range(k * m)]
    scores = np.asarray(score_fn(flat_p, [y for ys in cands for y in ys])).reshape(
        len(suite.prompts), k, m)
    out = []
    for n in ns:
        best = np.argmax(scores[:, :, :n], axis=-1)  # [N prompts, K samples]
        out.append((n, [[cands[i][j * m + best[i, j]] for j in range(k)]
                        for i in range(len(suite.prompts))]))
    return out


best_of_n = best_of_n_sweep  # the old name, kept for imports that use it


def bon_kl(n: int) -> float:
    return math.log(n) - (n - 1) / n


def run(config) -> list[dict]:
    t0 = time.perf_counter()
    os.makedirs(config.workdir, exist_ok=True)
    ref = reference_policy(ReferenceConfig(**config.reference), config.cache_dir or None)
    suite = Suite(ref, EvalConfig(**config.eval))
    task = tasks.TASKS[config.task]
    oracle = oracles.BTOracle(task.reward, config.label_temperature)
    train_ds = oracles.pair_dataset(ref, oracle, os.path.join(config.workdir, "pairs.jsonl"),
                                    config.num_pairs, seed=config.seed + 1)
    key = f"reward/{config.task}"
    rows = [dict(method="reference", param="-", **suite.evaluate(ref.params))]
    for beta in config.betas:
        params = train_dpo(ref, train_ds, beta=beta, workdir=os.path.join(
            config.workdir, f"dpo_beta{beta}"), seed=config.seed, **config.dpo)
        rows.append(dict(method="dpo", param=f"beta={beta}", **suite.evaluate(params)))
    score = lambda p, c: tasks.score(task.reward, p, c)  # noqa: E731
    for n, completions in best_of_n_sweep(suite, score, config.bon_ns):
        rows.append(dict(method="best_of_n", param=f"N={n}",
                         **suite.score(completions, kl=bon_kl(n))))
    for r in rows:
        r["reward"] = r[key]
    table = markdown_table(rows, COLUMNS)
    with open(os.path.join(config.workdir, "frontier.md"), "w") as fh:
        fh.write(f"# DPO frontier on `{config.task}` (true reward vs KL to the reference)\n\n")
        fh.write(f"reference: {ref.directory} (held-out CE {ref.metrics['heldout_ce']:.4f}, "
                 f"process NLL {ref.metrics['process_nll']:.4f} nats/token)\n\n{table}")
    with open(os.path.join(config.workdir, "frontier.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    plot(rows, os.path.join(config.workdir, "frontier.png"), config.task)
    print(table, flush=True)
    print(f"wrote {config.workdir}/frontier.{{md,json,png}} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def plot(rows: list[dict], path: str, task: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for method, marker in (("dpo", "o"), ("best_of_n", "s"), ("reference", "*")):
        rs = [r for r in rows if r["method"] == method]
        ax.plot([r["kl"] for r in rs], [r["reward"] for r in rs], marker=marker,
                linestyle="-" if method == "best_of_n" else "", label=method)
        for r in rs if method != "reference" else []:
            ax.annotate(r["param"], (r["kl"], r["reward"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("KL(pi || pi_ref), nats")
    ax.set_ylabel(f"true reward ({task})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
