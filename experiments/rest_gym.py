r"""ReST on the gym (Gulcehre et al. 2023, Table 1's analogue): BC, OnlineRL (RLOO), G=1 I=0,
G=1 I=4, G=2 I=3.

    python -m jaxalign --config experiments/rest_gym.py --workdir results/rest_gym
    python -m jaxalign --config experiments/rest_gym.py:smoke --workdir /tmp/rest_gym

The gym's reference policy starts; D is one sample of the gym's language per prompt (its
"human data"); a proxy reward model fit to few oracle labels of the sentiment task scores
every sample; rewards are normalised by their rank among the prompt's own records
("percentile": the proxy's raw scores span ~[-1, 2], so sigma(r) crowds them into [0.3, 0.9]
and leaves the paper's upper thresholds empty), then the paper's thresholds [0.7, 0.8, 0.9,
0.95, 0.99] above the mean select the improve steps' rows; every improve step keeps the
checkpoint with the best held-out proxy score and halves the learning rate. Each policy is
then scored on fresh test prompts by the proxy (the paper's measure) and the true reward.
Writes rest.md (the table), rest.json and rest.png under the workdir. Full: 3 seeds;
`smoke`: one seed, fewer prompts and steps.
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.algorithm = "rest_gym"
    c.workdir = "results/rest_gym"
    c.cache_dir = ""  # "" = $JAXALIGN_GYM_CACHE or ~/.cache/jaxalign/gym
    c.reference = ml_collections.ConfigDict()  # ReferenceConfig overrides (part of the hash)
    c.seed = 0
    c.seeds = [0] if smoke else [0, 1, 2]
    c.task = "sentiment"
    c.label_temperature = 0.5  # the proxy's training labels: BT oracle over the true reward
    c.proxy = ml_collections.ConfigDict(dict(num_pairs=128 if smoke else 256,
                                             steps=40 if smoke else 100))
    c.num_prompts = 32 if smoke else 256  # D: one language sample per prompt
    c.num_heldout = 16 if smoke else 64  # the best checkpoint is chosen on these
    c.num_test = 32 if smoke else 256  # the table's scores
    c.test_samples = 2 if smoke else 4
    c.max_len = 64
    c.batch_size = 32
    c.optim = ml_collections.ConfigDict(dict(optimizer="adamw", lr=1e-3, warmup_steps=5,
                                             decay="constant", grad_clip=1.0))
    c.rest = ml_collections.ConfigDict(dict(
        samples=4 if smoke else 8, temperature=0.8, max_new_tokens=24, normalize="percentile",
        threshold_mode="global", thresholds=(0.7, 0.8, 0.9, 0.95, 0.99),
        bc_steps=6 if smoke else 60, improve_train_steps=6 if smoke else 60,
        lr_decay=0.5, select="best", eval_every=3 if smoke else 20,
        eval_samples=1 if smoke else 2, shard_size=256, score_chunk=64, sample_batch=64))
    # the online baseline (the paper's OnlineRL row is PPO; RLOO stands in): the same proxy
    # reward and prompts, K samples per prompt per step, the KL to the reference folded in
    c.online = ml_collections.ConfigDict(dict(
        steps=8 if smoke else 120, prompts_per_step=8 if smoke else 16, samples=4,
        max_new_tokens=24, temperature=1.0, kl_coef=0.05, clip_eps=0.2, passes=2,
        checkpoint_every=4 if smoke else 20, sample_batch=64))
    c.online_optim = ml_collections.ConfigDict(dict(optimizer="adamw", lr=3e-4, warmup_steps=2,
                                                    decay="constant", grad_clip=1.0))
    c.start_over = False
    return c
