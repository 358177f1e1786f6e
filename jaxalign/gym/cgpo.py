"""CGPO on the gym: reward hacking of proxy reward models, caught by judges (the analogue of the
CGPO paper's PPO-vs-CGPO contrast, Xu et al. 2024, Table 2).

    python -m jaxalign --config experiments/cgpo_gym.py:smoke --workdir /tmp/cgpo_gym

Setup: the gym's reference policy starts; each task's reward is a proxy reward model
(`gym.proxy`: fit to few Bradley-Terry labels of the task's true reward), so optimising it hard
finds what the proxy overrates. Task kinds (`TASKS`; `config.tasks` picks them):
  chat  text prompts, sentiment proxy; judges: no token thrice in a row, 1..max_tokens words,
        ends on EOS (the hacks of this proxy: repetition, rambling, no end).
  help  text prompts (disjoint from chat's), helpfulness proxy; the same judges.
  math  arithmetic prompts ("add a b ="), arithmetic proxy; judges: the answer (a + b) mod 10
        first, and exactly one digit (a correct but badly formatted answer is a violation, as
        in the paper). (The reference answers at chance, ~10%: a hard start for every method.)
Each method (`methods`: RLOO, the unconstrained baseline that stands in for the paper's PPO,
with the judges measured but not applied; CRPG, CRRAFT, CODPO) trains from the reference for
the same steps, prompts and samples (`jaxalign.algorithms.cgpo.run_cgpo`), then is evaluated on
fresh test prompts of each task: proxy reward, true reward, violation rate (any judge) and the
true reward of valid responses (a violating response counts 0: what a user could use).
Writes cgpo.md (the table), cgpo.json and cgpo.png (proxy reward, true reward and violation
rate of each task's training rollouts against the step) under the workdir.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from jaxalign.algorithms.cgpo import CGPOSettings, CGPOTask, judge_records, run_cgpo
from jaxalign.algorithms.online import rollout_records
from jaxalign.gym import judges as J
from jaxalign.gym import language as L
from jaxalign.gym import oracles, tasks
from jaxalign.gym.policy import ReferenceConfig, reference_policy
from jaxalign.gym.proxy import train_proxy
from jaxalign.sampling import Sampler
from jaxalign.sharding import make_mesh

LABELS = {"rloo": "OnlineRL (RLOO, unconstrained)", "crpg": "CGPO: CRPG",
          "crraft": "CGPO: CRRAFT", "codpo": "CGPO: CODPO"}


COLUMNS = ("reward", "true_reward", "valid_true_reward", "violation")


def chat_judges(max_tokens: int):
    return [J.NoRepeatJudge(3), J.LengthJudge(1, max_tokens), J.EndsWithEOSJudge()]


def math_judges(max_tokens: int):
    del max_tokens
    return [J.ArithmeticAnswerJudge(), J.AnswerFormatJudge()]


# task kind -> (prompt kind, true reward (its proxy learns it from few labels), judges)
TASKS = {"chat": ("text", tasks.TASKS["sentiment"].reward, chat_judges),
         "help": ("text", tasks.TASKS["helpfulness"].reward, chat_judges),
         "math": ("arith", tasks.TASKS["arithmetic"].reward, math_judges)}


def prompt_rows(lang, name: str, kind: str, n: int, seed: int, exclude=()) -> list[dict]:
    """n distinct prompts of a kind ("text" or "arith": 100 in all), none in `exclude`."""
    seen, out = {tuple(p) for p in exclude}, []
    for p in lang.sample_prompts(8 * n + 200, seed, kind):
        if tuple(p) not in seen and len(out) < n:
            seen.add(tuple(p))
            out.append({"id": f"{name}{len(out)}", "prompt": L.text(p),
                        "prompt_tokens": [int(t) for t in p]})
    return out


def score_step(proxy, true_reward):
    def score(records):
        prompts = [r["prompt_tokens"] for r in records]
        completions = [r["tokens"] for r in records]
        return {"reward": proxy.score(prompts, completions),
                "true_reward": tasks.score(true_reward, prompts, completions)}
    return score


def evaluate(sampler, task: CGPOTask, params, rows, samples: int, max_new: int, seed: int):
    """Proxy reward, true reward and violation rate of the policy on test prompt rows."""
    sampler.set_params(params)
    out = sampler(prompt_ids=[r["prompt_tokens"] for r in rows], ids=[r["id"] for r in rows],
                  n=samples, max_new_tokens=max_new, seed=seed)
    records = rollout_records(rows, out)
    cols = task.score(records)
    passed = judge_records(task, records).all(axis=1)
    return {"reward": float(np.mean(cols["reward"])),
            "true_reward": float(np.mean(cols["true_reward"])),
            "valid_true_reward": float(np.mean(np.where(passed, cols["true_reward"], 0.0))),
            "violation": float(1 - passed.mean())}


def build(ref, config, seed: int, root: str) -> dict:
    """Each task's proxy (fit under root/proxy-<kind>), train and test prompt rows (disjoint
    across tasks; text test prompts disjoint from every train set)."""
    lang = ref.language
    out, used = {"train": {}, "test": {}, "proxy": {}}, []
    for i, (name, tc) in enumerate(config.tasks.items()):
        if tc.kind not in TASKS:
            raise ValueError(f"config.tasks.{name}.kind {tc.kind!r}: known {sorted(TASKS)}")
        kind, true_reward, _ = TASKS[tc.kind]
        out["proxy"][name] = train_proxy(
            ref, oracles.BTOracle(true_reward, config.label_temperature),
            os.path.join(root, f"proxy-{tc.kind}"), seed=seed, **config.proxy)
        out["train"][name] = prompt_rows(lang, name, kind, tc.num_prompts, 1_000 + 100 * i + seed,
                                         exclude=used)
        used += [r["prompt_tokens"] for r in out["train"][name]]
        out["test"][name] = prompt_rows(lang, name, kind, config.num_test, 7_000 + 100 * i + seed,
                                        exclude=used if kind == "text" else ())
    return out


def make_tasks(setup: dict, config, method: str) -> list[CGPOTask]:
    """The CGPO tasks of `config.tasks`, every one with optimizer `method`."""
    return [CGPOTask(name, setup["train"][name],
                     score_step(setup["proxy"][name], TASKS[tc.kind][1]),
                     judges=TASKS[tc.kind][2](tc.max_tokens), optimizer=method,
                     **{k: v for k, v in tc.items()
                        if k not in ("kind", "num_prompts", "max_tokens")})
            for name, tc in config.tasks.items()]


def run(config) -> dict:
    t0 = time.perf_counter()
    os.makedirs(config.workdir, exist_ok=True)
    ref = reference_policy(ReferenceConfig(**config.reference), config.cache_dir or None)
    mesh = make_mesh(devices=jax.devices()[:1])  # the gym's policy is tiny: one device is fastest
    evaluator = Sampler(ref.model_cfg, ref.params, ref.tokenizer, max_len=config.max_len)
    s = CGPOSettings(**config.cgpo)
    results = {}
    for seed in config.seeds:
        root = os.path.join(config.workdir, f"seed{seed}")
        setup = build(ref, config, seed, root)
        for method in config.methods:
            cgpo_tasks = make_tasks(setup, config, method)
            out = run_cgpo(s, cgpo_tasks, policy=(ref.model_cfg, ref.params),
                           tokenizer=ref.tokenizer, workdir=os.path.join(root, method),
                           optim=config.optim.to_dict(), seed=seed, max_len=config.max_len,
                           mesh=mesh)
            test = {t.name: evaluate(evaluator, t, out["params"], setup["test"][t.name],
                                     config.test_samples, s.max_new_tokens, seed + 5)
                    for t in cgpo_tasks}
            results[f"{seed}/{method}"] = {"test": test, "history": out["history"]}
        results[f"{seed}/reference"] = {"test": {
            t.name: evaluate(evaluator, t, ref.params, setup["test"][t.name],
                             config.test_samples, s.max_new_tokens, seed + 5)
            for t in cgpo_tasks}}
    report = summarise(results, config)
    write_report(config, report)
    print(f"wrote {config.workdir}/cgpo.{{md,json,png}} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return report


def summarise(results: dict, config) -> dict:
    table = []
    for method in ("reference", *config.methods):
        entry = {"method": "reference (start)" if method == "reference" else LABELS[method]}
        for name in config.tasks:
            for k in COLUMNS:
                v = np.array([results[f"{s}/{method}"]["test"][name][k] for s in config.seeds])
                entry[f"{name}/{k}"] = float(v.mean())
                entry[f"{name}/{k}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        table.append(entry)
    keys = [f"{n}/{k}" for n in config.tasks for k in ("reward", "true_reward", "violation")]
    curves = {m: {k: np.mean([[h[k] for h in results[f"{s}/{m}"]["history"]]
                              for s in config.seeds], axis=0).tolist() for k in keys}
              for m in config.methods}
    return {"table": table, "curves": curves}


def write_report(config, report: dict) -> None:
    names = list(config.tasks)
    head = " | ".join(f"{n} {c}" for n in names for c in ("proxy", "true", "valid true",
                                                            "violation"))
    lines = [f"| method | {head} |", "|---|" + "---|" * len(COLUMNS) * len(names)]
    for e in report["table"]:
        cells = " | ".join(f"{e[f'{n}/{k}']:.3f} +- {e[f'{n}/{k}_sd']:.3f}"
                           for n in names for k in COLUMNS)
        lines.append(f"| {e['method']} | {cells} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(config.workdir, "cgpo.md"), "w") as fh:
        fh.write(f"# CGPO on the gym: {config.num_test} test prompts per task, "
                 f"{config.test_samples} samples each, mean +- sd over seeds "
                 f"{list(config.seeds)}; {config.cgpo.steps} steps per method\n\n{table}")
    with open(os.path.join(config.workdir, "cgpo.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    plot(report, os.path.join(config.workdir, "cgpo.png"), names)
    print(table, flush=True)


def plot(report: dict, path: str, names: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = (("reward", "proxy reward"), ("true_reward", "true reward"),
             ("violation", "violation rate"))
    fig, axes = plt.subplots(len(names), 3, figsize=(11, 3.2 * len(names)), dpi=110,
                             squeeze=False)
    for row, name in enumerate(names):
        for col, (k, label) in enumerate(kinds):
            ax = axes[row][col]
            for method, c in report["curves"].items():
                ax.plot(range(1, len(c[f"{name}/{k}"]) + 1), c[f"{name}/{k}"],
                        label=LABELS[method])
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xlabel("step")
            if row == col == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
