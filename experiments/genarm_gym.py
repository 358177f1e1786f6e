r"""GenARM on the gym: ARMs trained on oracle preferences guide the frozen reference policy.

    python -m jaxalign --config experiments/genarm_gym.py --workdir results/genarm_gym
    python -m jaxalign --config experiments/genarm_gym.py:smoke --workdir /tmp/genarm

Trains (once; cached under ~/.cache/jaxalign/gym/<hash>) the tiny reference policy, then three
ARMs from its weights with GenARM's loss (beta_r = 0.1; the paper's HH-RLHF value is 0.05, its
UltraFeedback one 0.1) on Bradley-Terry-labelled pairs of reference samples: one on the
sentiment task, one on helpfulness, one on harmlessness. Guided decoding of the reference at
alpha in `alphas` (alpha = 1 / beta_r = 10 is the paper's default weight; alpha = 0 is the
reference itself) and the two-ARM helpful/harmless sweep are evaluated with the gym's suite.
Writes genarm.md / .json, genarm_guided.png (reward vs KL) and genarm_pareto.png.
Full: ~3 min on 2 CPU cores with the reference cached. Measured (held-out pairs ordered by the
true reward; the untrained ARM is the reference's own log-probs): ARM accuracy sentiment 0.74
(untrained 0.46), helpfulness 0.54 (0.31), harmlessness 0.95 (0.80; summed log-probs already
prefer the shorter, cleaner completion). Sentiment reward vs KL: alpha 0: -0.02 / 0; 0.1:
0.21 / 0.31; 0.25: 0.46 / 1.2; 0.5: 0.69 / 2.8; 1: 0.86 / 5.4; 2: 0.91 / 9.3; 10: 0.91 / 16.
Two ARMs, total alpha 1, l = 0 .. 1: helpfulness 0.30 -> 0.50, harmlessness -0.15 -> -0.81,
both monotone (reference 0.23 / -0.53). `smoke`: fewer pairs, steps and prompts (~1 min with
the reference cached).
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.algorithm = "genarm_gym"  # jaxalign.gym.genarm
    c.workdir = "results/genarm_gym"
    c.cache_dir = ""  # "" = $JAXALIGN_GYM_CACHE or ~/.cache/jaxalign/gym
    c.seed = 0
    c.reference = ml_collections.ConfigDict()  # ReferenceConfig overrides (part of the hash)
    c.task = "sentiment"
    c.label_temperature = 0.2  # BT oracle: P(y1 > y2) = sigma((r1 - r2) / T)
    c.num_pairs = 512 if smoke else 2048  # prompts, one labelled pair each (ties dropped)
    c.num_heldout_pairs = 256 if smoke else 512
    c.arm = ml_collections.ConfigDict(dict(
        beta_r=0.1, gamma=0.0, steps=60 if smoke else 300, batch_size=32,
        lr=2e-3 if smoke else 1e-3))
    c.guide_convention = "paper"  # or "official" (see jaxalign.sampling.strategies)
    c.alphas = [0.0, 0.25, 1.0] if smoke else [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0]
    c.multi = ml_collections.ConfigDict(dict(
        tasks=("helpfulness", "harmlessness"), total_alpha=1.0,
        lambdas=[0.0, 0.5, 1.0] if smoke else [0.0, 0.25, 0.5, 0.75, 1.0]))
    c.eval = ml_collections.ConfigDict(dict(
        num_text=32 if smoke else 128, num_arith=4 if smoke else 32, samples=2 if smoke else 4))
    return c
