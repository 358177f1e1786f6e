"""SPPO on the gym: self-play iterations against iterative DPO, on a Bradley-Terry-consistent
preference oracle and on the gym's intransitive (rock-paper-scissors) one.

    python -m jaxalign --config experiments/sppo_gym.py:smoke --workdir /tmp/sppo_gym

The analogue of the SPPO paper's AlpacaEval table (Wu et al. 2024: Mistral-7B-Instruct LC win
rate 17.11 -> 24.79 -> 26.89 -> 28.53, above iterative DPO), where the preference model is
known exactly. From the gym's reference policy pi_0, for each oracle, T SPPO iterations and T
iterative-DPO iterations (`jaxalign.algorithms.sppo.run_sppo`) with the same prompt splits,
samples and preference matrices' source; every iterate is evaluated on held-out test prompts:
  win_rate        P(iterate's sample > pi_0's sample) by the oracle, sample j against sample j
  kl              Monte-Carlo KL(pi_t || pi_0) per sequence (sampled tokens' log-ratio)
  exploitability  (intransitive oracle) the win rate of the best fixed response style against
                  the policy's style mix q: max_s sum_s' q(s') P(s > s') (1/2: unexploitable;
                  a completion with no style word ties with everything). Reported for each
                  iterate and for the uniform mixture of iterates 1..T, which is what SPPO's
                  theory bounds: a last iterate may cycle in a rock-paper-scissors game.
Each seed draws its own prompt splits and test prompts and trains its own runs; the table is
the mean +- sd over seeds. Writes sppo.md (the table), sppo.json (with every seed's rows and
every iteration's training summary) and sppo.png under the workdir.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from jaxalign.algorithms import driver as drv_lib
from jaxalign.algorithms.sppo import run_sppo, sppo_settings
from jaxalign.gym import language as L
from jaxalign.gym import oracles, tasks
from jaxalign.gym.policy import ReferenceConfig, pack, reference_policy
from jaxalign.models import completion_logprobs
from jaxalign.sampling import Sampler
from jaxalign.sharding import make_mesh

METHODS = {"SPPO": "sppo", "iterative DPO": "dpo"}


def make_oracle(name: str, config):
    if name == "bt":
        return oracles.BTOracle(tasks.TASKS[config.task].reward, config.bt_temperature)
    if name == "cyclic":
        return oracles.CyclicOracle(config.cyclic_margin)
    raise ValueError(f"sppo_gym: unknown oracle {name!r} (bt, cyclic)")


def oracle_preference(oracle):
    """The preference step of a gym oracle: P[i, j] = oracle.prob(y_i, y_j) for i < j over a
    prompt's K samples (EOS stripped), P[j, i] = 1 - P[i, j], all pairs in one batched call."""

    def preference(groups: list[list[dict]]) -> np.ndarray:
        K = len(groups[0])
        iu, ju = np.triu_indices(K, 1)
        prompts, y1, y2 = [], [], []
        for g in groups:
            ys = [oracles.strip(r["tokens"], len(r["tokens"])) for r in g]
            prompts += [g[0]["prompt_tokens"]] * len(iu)
            y1 += [ys[i] for i in iu]
            y2 += [ys[j] for j in ju]
        p = np.asarray(oracle.prob(prompts, y1, y2), np.float64).reshape(len(groups), len(iu))
        P = np.full((len(groups), K, K), 0.5)
        P[:, iu, ju], P[:, ju, iu] = p, 1.0 - p
        return P

    return preference


def prompt_splits(lang, iterations: int, per_split: int, num_test: int, seed: int):
    """Disjoint text-prompt splits (one per iteration) and test prompts seen by none of them."""
    pool = lang.sample_prompts(20 * (iterations * per_split + num_test), seed, "text")
    unique = list(dict.fromkeys(tuple(p) for p in pool))
    need = iterations * per_split + num_test
    if len(unique) < need:
        raise ValueError(f"the gym language has only {len(unique)} distinct text prompts in "
                         f"{len(pool)} draws; asked for {need}")
    rng = np.random.default_rng(seed)
    unique = [unique[i] for i in rng.permutation(len(unique))[:need]]
    splits = [[{"id": f"s{t}-{i}", "prompt": L.text(p)}
               for i, p in enumerate(unique[t * per_split:(t + 1) * per_split])]
              for t in range(iterations)]
    return splits, [list(p) for p in unique[iterations * per_split:]]


class Evaluator:
    """Samples of a policy on the test prompts, scored against pi_0's (module docstring)."""

    def __init__(self, ref, prompts, *, samples: int, max_new: int, seed: int):
        self.ref, self.prompts, self.samples, self.max_new = ref, prompts, samples, max_new
        self.seed = seed
        self.sampler = Sampler(ref.model_cfg, ref.params, ref.tokenizer, max_len=64)
        self._logps = jax.jit(lambda p, t, m, lm: completion_logprobs(
            ref.model_cfg, p, t, m, lm).sum)
        self.start, _ = self.sample(ref.params, seed + 1)

    def sample(self, params, seed: int):
        self.sampler.set_params(params)
        out = self.sampler(prompt_ids=self.prompts, n=self.samples,
                           max_new_tokens=self.max_new, seed=seed)
        ys = [[out.tokens[i, j, :out.lengths[i, j]].tolist() for j in range(self.samples)]
              for i in range(len(self.prompts))]
        return ys, out.model_logprobs.sum(-1)

    def ref_logps(self, ys) -> np.ndarray:
        flat_p = [p for p, cs in zip(self.prompts, ys) for _ in cs]
        flat_c = [c for cs in ys for c in cs]
        t, m, lm = pack(flat_p, flat_c, length=64)
        return np.asarray(self._logps(self.ref.params, t, m, lm)).reshape(len(ys), -1)

    def __call__(self, params, oracle) -> dict:
        ys, logp = self.sample(params, self.seed)
        flat = lambda xs: [oracles.strip(y, len(y)) for row in xs for y in row]  # noqa: E731
        prompts = [p for p in self.prompts for _ in range(self.samples)]
        win = oracle.prob(prompts, flat(ys), flat(self.start))
        out = {"win_rate": float(np.mean(win)),
               "kl": float(np.mean(logp - self.ref_logps(ys))),
               "styles": style_mix(flat(ys))}
        if isinstance(oracle, oracles.CyclicOracle):
            out["exploitability"] = exploitability(out["styles"], oracle)
        return out


def style_mix(completions) -> list[float]:
    """[q(none), q(0), q(1), q(2)]: the share of completions of each style (`oracles.style`)."""
    counts = np.zeros(4)
    for y in completions:
        counts[oracles.style(y) + 1] += 1
    return (counts / max(counts.sum(), 1)).tolist()


def exploitability(q, oracle) -> float:
    """The best fixed style's win rate against the style mix q = [none, s0, s1, s2]."""
    return float(max(q[0] * 0.5 + sum(q[s2 + 1] * oracle.style_prob(s, s2) for s2 in range(3))
                     for s in range(3)))


def run(config) -> dict:
    t0 = time.perf_counter()
    os.makedirs(config.workdir, exist_ok=True)
    ref = reference_policy(ReferenceConfig(**config.reference), config.cache_dir or None)
    mesh = make_mesh(devices=jax.devices()[:1])  # the gym's policy is tiny: one device is fastest
    report = {"rows": [], "runs": {}}
    for seed in config.seeds:  # each seed: its own prompt splits, test prompts and training
        splits, test = prompt_splits(ref.language, config.sppo.iterations,
                                     config.prompts_per_split, config.num_test, seed + 17)
        evaluator = Evaluator(ref, test, samples=config.test_samples,
                              max_new=config.sppo.max_new_tokens, seed=seed + 5)
        for oracle_name in config.oracles:
            oracle = make_oracle(oracle_name, config)
            start = evaluator(ref.params, oracle)
            for method, key in METHODS.items():
                run_name = f"seed{seed}/{oracle_name}/{key}"
                s = sppo_settings({**config.sppo.to_dict(), **config[key].to_dict()})
                out = run_sppo(s, policy=(ref.model_cfg, ref.params), tokenizer=ref.tokenizer,
                               splits=splits, preference=oracle_preference(oracle),
                               workdir=os.path.join(config.workdir, run_name),
                               config={**config.to_dict(), "seed": seed, "run": run_name},
                               optim=config.optim.to_dict(), batch_size=config.batch_size,
                               seed=seed, max_len=config.max_len, mesh=mesh,
                               start_over=config.get("start_over", False))
                rows = [{"iterate": 0, **start}]
                for it in out["iterations"]:
                    params = drv_lib.load_policy(it["dir"], ref.params)
                    rows.append({"iterate": it["iteration"] + 1, **evaluator(params, oracle),
                                 "train_pair_win_rate": it["pair_win_rate"]})
                mix = np.mean([r["styles"] for r in rows[1:]], axis=0).tolist()
                rows.append({"iterate": "mixture 1..T", "styles": mix,
                             "win_rate": float(np.mean([r["win_rate"] for r in rows[1:]])),
                             **({"exploitability": exploitability(mix, oracle)}
                                if isinstance(oracle, oracles.CyclicOracle) else {})})
                report["rows"] += [{"seed": seed, "oracle": oracle_name, "method": method, **r}
                                   for r in rows]
                report["runs"][run_name] = out["iterations"]
    report["table"] = summarise(report["rows"])
    write_report(config, report)
    print(f"wrote {config.workdir}/sppo.{{md,json,png}} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return report


METRICS = ("win_rate", "kl", "exploitability")


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sd over seeds of each (oracle, method, iterate) row's metrics."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["oracle"], r["method"], r["iterate"]), []).append(r)
    table = []
    for (oracle, method, iterate), rs in groups.items():
        entry = {"oracle": oracle, "method": method, "iterate": iterate, "seeds": len(rs)}
        for k in METRICS:
            if k in rs[0]:
                v = np.array([r[k] for r in rs])
                entry[k], entry[f"{k}_sd"] = float(v.mean()), float(v.std(ddof=1) if len(v) > 1
                                                                       else 0.0)
        table.append(entry)
    return table


def write_report(config, report: dict) -> None:
    lines = ["| oracle | method | iterate | win rate vs pi_0 | KL to pi_0 | exploitability |",
             "|---|---|---|---|---|---|"]
    fmt = lambda r, k: (f"{r[k]:.3f} +- {r[k + '_sd']:.3f}" if k in r else "-")  # noqa: E731
    for r in report["table"]:
        lines.append(f"| {r['oracle']} | {r['method']} | {r['iterate']} | {fmt(r, 'win_rate')} | "
                     f"{fmt(r, 'kl')} | {fmt(r, 'exploitability')} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(config.workdir, "sppo.md"), "w") as fh:
        fh.write(f"# SPPO vs iterative DPO on the gym: {config.num_test} test prompts x "
                 f"{config.test_samples} samples, mean +- sd over seeds {list(config.seeds)}\n\n"
                 f"eta = {config.sppo.eta} (SPPO), beta = {config.dpo.beta} (iterative DPO); "
                 f"K = {config.sppo.samples}; {config.prompts_per_split} prompts per "
                 f"iteration\n\n{table}")
    with open(os.path.join(config.workdir, "sppo.json"), "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    plot(report, os.path.join(config.workdir, "sppo.png"))
    print(table, flush=True)


def plot(report: dict, path: str) -> None:
    """Win rate against pi_0 by iteration (each oracle), win rate against KL to pi_0 (each
    oracle: the frontier the iterates trace), and the cyclic oracle's exploitability."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = [r for r in report["table"] if isinstance(r["iterate"], int)]
    oracle_names = list(dict.fromkeys(r["oracle"] for r in table))
    fig, axes = plt.subplots(1, 2 * len(oracle_names) + 1,
                             figsize=(3.6 * (2 * len(oracle_names) + 1), 3.4), dpi=120)
    pick = lambda **kw: [r for r in table if all(r.get(k) == v for k, v in kw.items())]  # noqa
    styles = dict(zip(METHODS, ("o-", "s--")))
    for n, name in enumerate(oracle_names):
        ax, ax_kl = axes[2 * n], axes[2 * n + 1]
        for method, style in styles.items():
            rs = pick(oracle=name, method=method)
            ax.errorbar([r["iterate"] for r in rs], [r["win_rate"] for r in rs],
                        yerr=[r["win_rate_sd"] for r in rs], fmt=style, capsize=2, label=method)
            ax_kl.plot([r["kl"] for r in rs], [r["win_rate"] for r in rs], style, label=method)
            for r in rs:
                ax_kl.annotate(str(r["iterate"]), (r["kl"], r["win_rate"]), fontsize=6,
                               xytext=(3, -8), textcoords="offset points")
        ax.set_title(f"{name} oracle", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_xticks(sorted({r["iterate"] for r in table}))
        ax_kl.set_title(f"{name} oracle: win rate vs KL (labels: iteration)", fontsize=8)
        ax_kl.set_xlabel("KL to pi_0 (nats per sequence)")
        for a in (ax, ax_kl):
            a.axhline(0.5, color="gray", lw=0.5)
            a.set_ylabel("win rate vs pi_0")
            a.legend(fontsize=7)
    ax = axes[-1]
    for method, style in styles.items():
        rs = [r for r in pick(method=method) if "exploitability" in r]
        if rs:
            ax.errorbar([r["iterate"] for r in rs], [r["exploitability"] for r in rs],
                        yerr=[r["exploitability_sd"] for r in rs], fmt=style, capsize=2,
                        label=method)
    ax.axhline(0.5, color="gray", lw=0.5)
    ax.set_title("cyclic oracle: exploitability", fontsize=9)
    ax.set_xlabel("iteration")
    ax.set_xticks(sorted({r["iterate"] for r in table}))
    ax.set_ylabel("best response's win rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
