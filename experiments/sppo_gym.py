r"""SPPO on the gym (Wu et al. 2024's iteration table, analogue): 3 SPPO and 3 iterative-DPO
iterations from the gym's reference policy, on a Bradley-Terry oracle and an intransitive one.

    python -m jaxalign --config experiments/sppo_gym.py --workdir results/sppo_gym
    python -m jaxalign --config experiments/sppo_gym.py:smoke --workdir /tmp/sppo_gym

Each iteration samples K = 5 completions per prompt of its own prompt split from the current
iterate, fills the K x K preference matrix from the oracle, and trains on one (y_w, y_l) row per
prompt against the iteration's starting policy (`jaxalign.algorithms.sppo`). Both methods see
the same prompts, the same K and the same oracle; SPPO regresses log-ratios onto
eta (P_w - 1/2), eta (P_l - 1/2), iterative DPO takes the pair with `dpo.sigmoid`.

eta: the official 1000 is a 7B setting (sequence log-ratios of hundreds of tokens, lr 5e-7).
The gym's completions are ~10 tokens and its policy is trained with lr 1e-3, so the targets
eta (P - 1/2) must be log-ratios such a model reaches: eta = 10 gives targets within +-5 nats.
Training: AdamW lr 1e-3 with linear decay, 4 passes over each iteration's rows (the official
RMSprop lr 5e-7 for one epoch moves a 10-token model by almost nothing).
Sampling at temperature 1.0, top_p 1.0 (the paper's text; the official code's 0.7 / 0.9 makes
the gym's short completions tie more often). The table (sppo.md) reports each iterate's
win rate against pi_0 and KL to pi_0 on test prompts no split contains, and on the cyclic
oracle the exploitability of each iterate and of the uniform mixture of iterates.
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.algorithm = "sppo_gym"
    c.workdir = "results/sppo_gym"
    c.cache_dir = ""  # "" = $JAXALIGN_GYM_CACHE or ~/.cache/jaxalign/gym
    c.reference = ml_collections.ConfigDict()  # ReferenceConfig overrides (part of the hash)
    c.seeds = [0] if smoke else [0, 1, 2]
    c.oracles = ["bt", "cyclic"]
    c.task = "sentiment"  # the BT oracle's true reward
    c.bt_temperature = 0.5
    c.cyclic_margin = 0.3
    c.prompts_per_split = 64 if smoke else 192  # the language has ~780 distinct text prompts
    c.num_test = 64 if smoke else 160
    c.test_samples = 2 if smoke else 4
    c.max_len = 64
    c.batch_size = 16 if smoke else 32
    c.optim = ml_collections.ConfigDict(dict(optimizer="adamw", lr=1e-3, decay="linear",
                                             grad_clip=10.0))
    c.sppo = ml_collections.ConfigDict(dict(
        iterations=3, samples=5, temperature=1.0, top_p=1.0, max_new_tokens=24,
        loss="sppo.sppo", eta=10.0, epochs=4.0, shard_size=256, score_chunk=64,
        sample_batch=64, checkpoint_every=50))
    c.dpo = ml_collections.ConfigDict(dict(loss="dpo.sigmoid", beta=0.1))  # the baseline's
    c.start_over = False
    return c
