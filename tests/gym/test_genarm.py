"""GenARM on the gym (smoke config): the ARM ranks held-out pairs, guidance raises the true
reward at a measured KL, and two ARMs trade helpfulness against harmlessness."""

import os

import numpy as np

from experiments import genarm_gym
from jaxalign.main import run_config


def test_smoke_genarm_guides_the_reference(ref, ref_cache, tmp_path):
    c = genarm_gym.get_config("smoke")
    c.workdir, c.cache_dir = str(tmp_path), ref_cache
    result = run_config(c)  # the entry point's dispatch: algorithm "genarm_gym"
    for name in ("genarm.md", "genarm.json", "genarm_guided.png", "genarm_pareto.png"):
        assert os.path.getsize(tmp_path / name) > 500, name

    # held-out pairs ordered by the true reward: the trained ARM agrees well above chance
    # (the untrained ARM, the reference's own log-probs, is at chance on sentiment)
    acc, before = result["arm_accuracy"], result["arm_accuracy_untrained"]
    assert acc["sentiment"] > 0.6 and acc["sentiment"] > before["sentiment"] + 0.08, (acc, before)

    rows = {r["param"]: r for r in result["guided"]}
    base, strong = rows["alpha=0.0"], rows[f"alpha={c.alphas[-1]}"]
    assert base["method"] == "reference" and abs(base["kl"]) < 0.01  # unguided: KL ~ 0
    rewards = [r["reward"] for r in result["guided"]]
    kls = [r["kl"] for r in result["guided"]]
    assert strong["reward"] > base["reward"] + 0.3, rewards
    assert np.all(np.diff(rewards) > 0) and np.all(np.diff(kls) > 0), (rewards, kls)

    # (alpha_help, alpha_harm) = (l A, (1 - l) A): helpfulness up, harmlessness down along l
    help_ = [p["reward/helpfulness"] for p in result["pareto"]]
    harm = [p["reward/harmlessness"] for p in result["pareto"]]
    assert np.all(np.diff(help_) > 0) and np.all(np.diff(harm) < 0), (help_, harm)
