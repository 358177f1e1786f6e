r"""DPO reward-vs-KL frontier on the gym's sentiment task (the DPO paper's Figure 2 analogue).

    python -m jaxalign --config experiments/dpo_frontier.py --workdir results/dpo_frontier
    python -m jaxalign --config experiments/dpo_frontier.py:smoke --workdir /tmp/frontier_smoke

Trains (once; cached under ~/.cache/jaxalign/gym/<hash>, ~1-1.5 min on 2 CPU cores) the tiny
reference policy, labels pairs of its samples with a Bradley-Terry oracle over the true
sentiment reward (temperature 0.5), trains DPO at each beta and evaluates every policy and
best-of-N of the reference with the gym's suite. Writes frontier.md / .json / .png.
Full: ~5 min on 2 CPU cores with the reference cached. Expected: every DPO point has a higher
true sentiment reward than the reference (~0.1 -> 0.5-0.9) and the KL falls as beta grows
(beta=0.05 the largest KL, beta=1 the smallest); best-of-N traces log N - (N-1)/N.
`smoke`: 2 betas, 10 DPO steps, 16 + 4 prompts: ~30 s with the reference cached.
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.algorithm = "dpo_frontier"  # jaxalign.gym.frontier
    c.workdir = "results/dpo_frontier"
    c.cache_dir = ""  # "" = $JAXALIGN_GYM_CACHE or ~/.cache/jaxalign/gym
    c.seed = 0
    c.reference = ml_collections.ConfigDict()  # ReferenceConfig overrides (part of the hash)
    c.task = "sentiment"
    c.label_temperature = 0.5  # BT oracle: P(y1 > y2) = sigma((r1 - r2) / T)
    c.num_pairs = 64 if smoke else 2048  # prompts, one labelled pair each
    c.betas = [0.1, 1.0] if smoke else [0.05, 0.1, 0.3, 1.0]
    c.dpo = ml_collections.ConfigDict(dict(
        steps=10 if smoke else 150, batch_size=32, lr=1e-3))
    c.bon_ns = [1, 4] if smoke else [1, 2, 4, 8, 16]
    c.eval = ml_collections.ConfigDict(dict(
        num_text=16 if smoke else 128, num_arith=4 if smoke else 32, samples=2 if smoke else 4))
    return c
