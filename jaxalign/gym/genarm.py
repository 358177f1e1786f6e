"""GenARM on the gym: autoregressive reward models trained on oracle preferences, then guided
decoding of the frozen reference (Xu et al. 2024; the analogue of its Tables 1-2 and Figure 4).

    python -m jaxalign --config experiments/genarm_gym.py:smoke --workdir /tmp/genarm

1. ARM training: each ARM starts from the reference policy (GenARM initialises it from the SFT
   model) and is trained with the `genarm.arm` loss through the shared train step on pairs of
   reference samples labelled by a Bradley-Terry oracle over a task's true reward (noisy labels).
   Its held-out accuracy is the share of pairs on fresh prompts, ordered by the true reward,
   that r(x, y) = sum_t log pi_r(y_t | .) orders the same way (ties 1/2).
2. Guided decoding: the reference is sampled with the ARM as a guide, `pi_ref * pi_r^alpha` per
   token, for each alpha (alpha = 0 is the reference itself). The KL to the reference is the
   Monte-Carlo mean of sum_t log pi(y_t) - log pi_ref(y_t), exact per token since the sampler
   returns both log-probs. Every row goes through the gym's evaluation suite.
3. Multi-objective: two ARMs, on helpfulness and on harmlessness (they conflict on prompts that
   ask for a harmful keyword), guide together with (alpha_1, alpha_2) = (l A, (1 - l) A) for a
   sweep of l: the two true rewards trace a trade-off.

Writes genarm.md, genarm.json, genarm_guided.png (reward vs KL) and genarm_pareto.png.
"""

from __future__ import annotations

import json
import os
import time
import zlib

import jax
import numpy as np

from jaxalign.algorithms.runner import pair_weight
from jaxalign.data import BatchIterator
from jaxalign.gym import oracles, tasks
from jaxalign.gym.evaluate import EvalConfig, Suite, completions_of, markdown_table
from jaxalign.gym.frontier import train_preference
from jaxalign.gym.policy import ReferenceConfig, reference_policy
from jaxalign.reward.arm import arm_rewards
from jaxalign.sampling import GuideModel, Sampler

COLUMNS = ["method", "param", "reward", "kl", "win_rate", "violation/any", "distinct_2",
           "length"]
PARETO_COLUMNS = ["method", "param", "reward/helpfulness", "reward/harmlessness", "kl",
                  "violation/any", "length"]


def train_arm(ref, train_ds, *, beta_r: float, workdir: str, steps: int, batch_size: int,
              lr: float, seed: int, gamma: float = 0.0):
    """An ARM from the reference's weights, trained with GenARM's loss; returns its params."""
    return train_preference(ref, train_ds, loss="genarm.arm",
                            loss_kwargs={"beta": beta_r, "gamma": gamma}, workdir=workdir,
                            steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                            with_reference=False)


def arm_accuracy(cfg, params, ds, batch_size: int = 64) -> float:
    """Held-out share of pairs whose chosen completion the ARM rewards more (ties count 1/2)."""
    score = jax.jit(lambda p, t, m, lm: arm_rewards(cfg, p, t, m, lm))
    hits, total = 0.0, 0.0
    for b in BatchIterator(ds, batch_size=batch_size, shuffle=False, num_epochs=1):
        w = pair_weight(b)["weight"]
        r_w = np.asarray(score(params, b["chosen_tokens"], b["chosen_mask"],
                               b["chosen_loss_mask"]))
        r_l = np.asarray(score(params, b["rejected_tokens"], b["rejected_mask"],
                               b["rejected_loss_mask"]))
        hits += float(np.sum(w * ((r_w > r_l) + 0.5 * (r_w == r_l))))
        total += float(np.sum(w))
    return hits / max(total, 1.0)


def guided_row(suite: Suite, sampler: Sampler, weights) -> dict:
    """The suite's metrics for the reference guided with `weights` (one alpha per guide)."""
    c = suite.cfg
    out = sampler(prompt_ids=suite.prompts, n=c.samples, max_new_tokens=c.max_new_tokens,
                  seed=c.seed, guide_weights=list(weights))
    completions = [completions_of(out, i) for i in range(len(suite.prompts))]
    # temperature 1, no filter: logprobs are log pi_guided, model_logprobs log pi_ref (0 past
    # the end), so their summed difference is each sample's exact log-ratio
    kl = float(np.mean(np.sum(out.logprobs - out.model_logprobs, axis=-1)))
    return suite.score(completions, kl=kl, stop_reason=out.stop_reason)


def arms_for(config, ref, task_names) -> dict:
    """{task: (ARM params, held-out accuracy, accuracy before training)}, each ARM trained on its
    own oracle's pairs."""
    arms = {}
    for name in task_names:
        k = zlib.crc32(name.encode()) % 10_000  # a task's data seeds depend on its name only
        oracle = oracles.BTOracle(tasks.TASKS[name].reward, config.label_temperature)
        root = os.path.join(config.workdir, f"arm_{name}")
        train_ds = oracles.pair_dataset(ref, oracle, os.path.join(root, "pairs.jsonl"),
                                        config.num_pairs, seed=config.seed + 1 + 10 * k)
        # held-out pairs on fresh prompts, ordered by the true reward itself (noiseless
        # oracle, ties dropped): accuracy is agreement with the truth, not with label noise
        truth = oracles.BTOracle(tasks.TASKS[name].reward, 0.0)
        heldout = oracles.pair_dataset(ref, truth, os.path.join(root, "heldout.jsonl"),
                                       config.num_heldout_pairs, seed=config.seed + 2 + 10 * k)
        params = train_arm(ref, train_ds, workdir=os.path.join(root, "train"),
                           seed=config.seed, **config.arm)
        # the untrained ARM (the reference itself) is the baseline: summed log-probs alone
        # already order pairs whose lengths differ (GenARM's reward is not length-normalised)
        before = arm_accuracy(ref.model_cfg, ref.params, heldout)
        arms[name] = (params, arm_accuracy(ref.model_cfg, params, heldout), before)
        print(f"ARM[{name}]: {len(train_ds)} pairs, held-out accuracy {arms[name][1]:.3f} "
              f"(untrained: {before:.3f}) on {len(heldout)} pairs", flush=True)
    return arms


def run(config) -> dict:
    t0 = time.perf_counter()
    os.makedirs(config.workdir, exist_ok=True)
    ref = reference_policy(ReferenceConfig(**config.reference), config.cache_dir or None)
    suite = Suite(ref, EvalConfig(**config.eval))
    pair = tuple(config.multi.tasks)
    arms = arms_for(config, ref, (config.task,) + tuple(t for t in pair if t != config.task))
    cfg = ref.model_cfg
    guide = lambda name: GuideModel(cfg, arms[name][0])  # noqa: E731
    conv = config.guide_convention

    sampler = Sampler(cfg, ref.params, ref.tokenizer, max_len=64, guides=[guide(config.task)],
                      guide_convention=conv)
    rows = []
    for alpha in config.alphas:
        row = guided_row(suite, sampler, [alpha])
        rows.append(dict(method="reference" if alpha == 0 else "genarm", param=f"alpha={alpha}",
                         reward=row[f"reward/{config.task}"], **row))

    two = Sampler(cfg, ref.params, ref.tokenizer, max_len=64, guides=[guide(t) for t in pair],
                  guide_convention=conv)
    A = config.multi.total_alpha
    pareto = []
    for lam in config.multi.lambdas:
        row = guided_row(suite, two, (lam * A, (1 - lam) * A))
        pareto.append(dict(method="genarm-2", param=f"a_{pair[0]}={lam * A:g}, "
                           f"a_{pair[1]}={(1 - lam) * A:g}", lam=lam, **row))

    result = {"task": config.task, "arm_accuracy": {k: v[1] for k, v in arms.items()},
              "arm_accuracy_untrained": {k: v[2] for k, v in arms.items()},
              "guided": rows, "pareto": pareto}
    write_report(config, ref, result)
    print(f"wrote {config.workdir}/genarm.{{md,json}} and plots in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return result


def write_report(config, ref, result: dict) -> None:
    w = config.workdir
    acc = ", ".join(f"{k} {v:.3f} (untrained {result['arm_accuracy_untrained'][k]:.3f})"
                    for k, v in result["arm_accuracy"].items())
    guided = markdown_table(result["guided"], COLUMNS)
    unguided = [r for r in result["guided"] if r["method"] == "reference"]
    pareto = markdown_table(unguided + result["pareto"], PARETO_COLUMNS)
    with open(os.path.join(w, "genarm.md"), "w") as fh:
        fh.write(f"# GenARM on the gym\n\nreference: {ref.directory}\n\n"
                 f"ARM held-out accuracy (chosen above rejected): {acc}\n\n"
                 f"## Guided decoding on `{result['task']}` (true reward vs KL to the "
                 f"reference; convention {config.guide_convention!r})\n\n{guided}\n"
                 f"## Two ARMs: helpfulness vs harmlessness\n\n{pareto}")
    with open(os.path.join(w, "genarm.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    plot(result, w)
    print(f"ARM accuracy: {acc}\n{guided}\n{pareto}", flush=True)


def plot(result: dict, workdir: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    rs = result["guided"]
    ax.plot([r["kl"] for r in rs], [r["reward"] for r in rs], marker="o")
    for r in rs:
        ax.annotate(r["param"], (r["kl"], r["reward"]), fontsize=6, textcoords="offset points",
                    xytext=(3, 3))
    ax.set_xlabel("KL(pi || pi_ref), nats")
    ax.set_ylabel(f"true reward ({result['task']})")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "genarm_guided.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ps = result["pareto"]
    ax.plot([p["reward/helpfulness"] for p in ps], [p["reward/harmlessness"] for p in ps],
            marker="s")
    for p in ps:
        ax.annotate(f"l={p['lam']:g}", (p["reward/helpfulness"], p["reward/harmlessness"]),
                    fontsize=6, textcoords="offset points", xytext=(3, 3))
    unguided = [r for r in result["guided"] if r["method"] == "reference"]
    if unguided:
        ax.plot([unguided[0]["reward/helpfulness"]], [unguided[0]["reward/harmlessness"]],
                marker="*", linestyle="", label="reference (unguided)")
        ax.legend(fontsize=7)
    ax.set_xlabel("true reward (helpfulness)")
    ax.set_ylabel("true reward (harmlessness)")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "genarm_pareto.png"))
    plt.close(fig)
