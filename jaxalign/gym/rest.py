"""ReST on the gym: the analogue of the ReST paper's Table 1 (Gulcehre et al. 2023, IWSLT'14).

    python -m jaxalign --config experiments/rest_gym.py:smoke --workdir /tmp/rest_gym

Setup: the gym's reference policy is the starting weights; D is one sample of the gym's
language (its "human data") for each of `num_prompts` text prompts; a learned proxy reward
model (`gym.proxy`: a reward model fit to few Bradley-Terry oracle labels of the task's true
reward) scores every sample, as the paper's learned metric does. For each seed two ReST runs
(`jaxalign.algorithms.rest`): G=1 with I=4 improve steps and G=2 with I=3; the table reports
BC (G=0, I=0), G=1 I=0, G=1 I=4 (first run) and G=2 I=3 (second), plus the online baseline
(the paper's OnlineRL row, PPO there: RLOO here, `jaxalign.algorithms.online`, on the same
proxy reward and prompts, with the `online` settings), each policy evaluated on
fresh test prompts (not the held-out prompts its checkpoint was chosen on) by the proxy reward
(the paper's measure) and the true task reward (which shows whether the proxy was hacked), as
mean +- sd over the seeds. Writes rest.md, rest.json and rest.png (both rewards against the
stage: BC, G1I0, G1I1, ..., G2I3) under the workdir.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from jaxalign.algorithms import driver as drv_lib
from jaxalign.algorithms.online import online_settings, run_online
from jaxalign.algorithms.rest import rest_settings, run_rest
from jaxalign.gym import language as L
from jaxalign.gym import oracles, tasks
from jaxalign.gym.policy import ReferenceConfig, reference_policy
from jaxalign.gym.proxy import train_proxy
from jaxalign.sampling import Sampler
from jaxalign.sharding import make_mesh

ROWS = (("BC", "A", "BC"), ("OnlineRL (RLOO)", "R", "RLOO"), ("G=1 I=0", "A", "G1I0"),
        ("G=1 I=4", "A", "G1I4"), ("G=2 I=3", "B", "G2I3"))
# the paper's OnlineRL row is PPO; RLOO (`jaxalign.algorithms.online`) stands in for it here
PAPER = {"BC": 70.9, "OnlineRL (RLOO)": 71.6, "G=1 I=0": 71.9, "G=1 I=4": 77.8,
         "G=2 I=3": 83.1}


def score_step(proxy, task):
    """The gym's score step: proxy reward (trains) and true reward (reported) per record."""

    def score(records):
        prompts = [r["prompt_tokens"] for r in records]
        completions = [r["tokens"] for r in records]
        return {"reward": proxy.score(prompts, completions),
                "true_reward": tasks.score(task.reward, prompts, completions)}

    return score


def dataset_d(language, n: int, seed: int) -> list[dict]:
    """D: one sample of the language per text prompt, as token-id rows (tokens end in EOS)."""
    prompts = language.sample_prompts(n, seed, "text")
    completions = language.sample(prompts, seed + 1)
    return [{"id": i, "prompt": L.text(p), "prompt_tokens": [int(t) for t in p],
             "tokens": [int(t) for t in c]} for i, (p, c) in enumerate(zip(prompts, completions))]


def test_scores(sampler, score, params, prompts, samples: int, max_new: int, seed: int) -> dict:
    """Mean of each score column over `samples` completions per test prompt (temperature 1)."""
    sampler.set_params(params)
    out = sampler(prompt_ids=prompts, n=samples, max_new_tokens=max_new, seed=seed)
    recs = [{"prompt_tokens": prompts[i], "tokens": out.tokens[i, j, :out.lengths[i, j]].tolist()}
            for i in range(len(prompts)) for j in range(samples)]
    return {k: float(np.mean(v)) for k, v in score(recs).items()}


def run(config) -> dict:
    t0 = time.perf_counter()
    os.makedirs(config.workdir, exist_ok=True)
    ref = reference_policy(ReferenceConfig(**config.reference), config.cache_dir or None)
    task = tasks.TASKS[config.task]
    lang = ref.language
    test_prompts = lang.sample_prompts(config.num_test, config.seed + 31_337, "text")
    evaluator = Sampler(ref.model_cfg, ref.params, ref.tokenizer, max_len=config.max_len)
    mesh = make_mesh(devices=jax.devices()[:1])  # the gym's policy is tiny: one device is fastest
    results = {}
    for seed in config.seeds:
        root = os.path.join(config.workdir, f"seed{seed}")
        proxy = train_proxy(ref, oracles.BTOracle(task.reward, config.label_temperature),
                            os.path.join(root, "proxy"), seed=seed, **config.proxy)
        score = score_step(proxy, task)
        D = dataset_d(lang, config.num_prompts, seed=1_000 + seed)
        heldout = [{"id": f"h{i}", "prompt": L.text(p)} for i, p in
                   enumerate(lang.sample_prompts(config.num_heldout, 2_000 + seed, "text"))]
        for run_name, (G, I) in (("A", (1, 4)), ("B", (2, 3))):
            s = rest_settings({**config.rest.to_dict(), "grow_steps": G, "improve_steps": I})
            out = run_rest(s, policy=(ref.model_cfg, ref.params), tokenizer=ref.tokenizer,
                           data=D, heldout=heldout, score=score,
                           workdir=os.path.join(root, run_name),
                           config={**config.to_dict(), "seed": seed, "run": run_name},
                           optim=config.optim.to_dict(), batch_size=config.batch_size,
                           seed=seed, max_len=config.max_len, mesh=mesh,
                           start_over=config.get("start_over", False))
            for st in out["stages"]:
                params = drv_lib.load_policy(st["dir"], ref.params)
                st["test"] = test_scores(evaluator, score, params, test_prompts,
                                         config.test_samples, config.rest.max_new_tokens,
                                         seed=config.seed + 5)
            results[f"{seed}/{run_name}"] = out["stages"]
        if config.get("online"):  # the online baseline: RLOO on the same proxy, prompts of D
            out = run_online(online_settings(config.online), policy=(ref.model_cfg, ref.params),
                             tokenizer=ref.tokenizer, score=score,
                             prompts=[{"id": r["id"], "prompt_tokens": r["prompt_tokens"]}
                                      for r in D], workdir=os.path.join(root, "rloo"),
                             optim=config.online_optim.to_dict(), seed=seed,
                             max_len=config.max_len, mesh=mesh)
            test = test_scores(evaluator, score, out["params"], test_prompts,
                               config.test_samples, config.online.max_new_tokens,
                               seed=config.seed + 5)
            results[f"{seed}/R"] = [{"label": "RLOO", "test": test}]
    report = summarise(results, config)
    write_report(config, ref, report)
    print(f"wrote {config.workdir}/rest.{{md,json,png}} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return report


def summarise(results: dict, config) -> dict:
    table = []
    for row, run_name, label in ROWS:
        if f"{config.seeds[0]}/{run_name}" not in results:
            continue  # (no online section: no RLOO row)
        vals = [next(st["test"] for st in results[f"{s}/{run_name}"] if st["label"] == label)
                for s in config.seeds]
        entry = {"method": row, "paper_iwslt": PAPER[row]}
        for k in ("reward", "true_reward"):
            v = np.array([x[k] for x in vals])
            entry[k], entry[f"{k}_sd"] = float(v.mean()), float(v.std(ddof=1) if len(v) > 1 else 0)
        table.append(entry)
    curves = {run_name: [{"label": st["label"], **{k: float(np.mean([
        next(x["test"][k] for x in results[f"{s}/{run_name}"] if x["label"] == st["label"])
        for s in config.seeds])) for k in ("reward", "true_reward")}}
        for st in results[f"{config.seeds[0]}/{run_name}"]] for run_name in ("A", "B")}
    return {"table": table, "curves": curves, "runs": results}


def write_report(config, ref, report: dict) -> None:
    lines = ["| method | proxy reward | true reward | paper (IWSLT, RM score) |",
             "|---|---|---|---|"]
    for e in report["table"]:
        lines.append(f"| {e['method']} | {e['reward']:.3f} +- {e['reward_sd']:.3f} | "
                     f"{e['true_reward']:.3f} +- {e['true_reward_sd']:.3f} | {e['paper_iwslt']} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(config.workdir, "rest.md"), "w") as fh:
        fh.write(f"# ReST on the gym (`{config.task}`): proxy and true reward on "
                 f"{config.num_test} test prompts, mean +- sd over seeds {list(config.seeds)}\n\n"
                 f"reference: {ref.directory}\n\n{table}")
    with open(os.path.join(config.workdir, "rest.json"), "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    plot(report, os.path.join(config.workdir, "rest.png"), config.task)
    print(table, flush=True)


def plot(report: dict, path: str, task: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted({x["label"] for c in report["curves"].values() for x in c},
                   key=lambda s: (s != "BC", s))  # BC, G1I0, G1I1, ..., G2I0, ...
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for ax, key, name in ((axes[0], "reward", "proxy reward"),
                          (axes[1], "true_reward", f"true reward ({task})")):
        for run_name, style in (("A", "o-"), ("B", "s--")):
            c = report["curves"][run_name]
            ax.plot([order.index(x["label"]) for x in c], [x[key] for x in c], style,
                    label=f"run {run_name}")
        ax.set_xticks(range(len(order)), order, fontsize=6, rotation=45)
        ax.set_xlabel("stage (grow G, improve I)")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
