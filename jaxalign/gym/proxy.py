"""A learned proxy reward: a scalar reward model fit to a few oracle-labelled pairs.

    proxy = train_proxy(ref, BTOracle(tasks.sentiment, 0.5), workdir, num_pairs=256)
    proxy.accuracy                       # held-out agreement with the noiseless oracle
    scores = proxy.score(prompts, completions)    # float32 [B]

The reward model is `jaxalign.reward`'s decoder + score head, its backbone initialised from the
reference policy, trained with `bradley_terry_objective` through the shared loop on pairs of
reference samples written as JSONL and read back with `load_dataset("preference", ...)`.
Few pairs make it imperfect, and so exploitable: optimising it hard (best-of-N with large N)
raises its score faster than the true reward; the gap is the measured reward hacking.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np

from jaxalign.algorithms.runner import Mapped, pair_weight
from jaxalign.data import BatchIterator
from jaxalign.gym import oracles
from jaxalign.gym.policy import Reference, pack
from jaxalign.objectives import bradley_terry_objective, pairwise_accuracy
from jaxalign.reward import init_reward_params, reward_logical_axes, reward_scores
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, train


@dataclasses.dataclass
class Proxy:
    cfg: object
    params: dict
    accuracy: float  # held-out pairwise agreement with the noiseless oracle
    num_pairs: int

    def score(self, prompts, completions) -> np.ndarray:
        """float32 [B]: rows padded to a power of two (one compile per size, none per call)."""
        out = []
        for i in range(0, len(prompts), 256):
            t, m, _ = pack(prompts[i:i + 256], completions[i:i + 256], length=64)
            rows = max(16, 1 << (len(t) - 1).bit_length())
            t = np.pad(t, ((0, rows - len(t)), (0, 0)))
            m = np.pad(m, ((0, rows - len(m)), (0, 0)))
            out.append(np.asarray(_scores(self.cfg, self.params, t, m))[:len(prompts[i:i + 256])])
        return np.concatenate(out)


@functools.partial(jax.jit, static_argnums=0)
def _scores(cfg, params, tokens, mask):
    return reward_scores(cfg, params, tokens, mask)


def train_proxy(ref: Reference, oracle, workdir: str, *, num_pairs: int = 256, steps: int = 100,
                batch_size: int = 32, lr: float = 1e-3, num_eval: int = 512,
                seed: int = 0) -> Proxy:
    """Fits the proxy on about `num_pairs` labelled pairs; accuracy on `num_eval` fresh pairs
    labelled by the same reward without noise (ties dropped)."""
    train_ds = oracles.pair_dataset(ref, oracle, os.path.join(workdir, "train.jsonl"), num_pairs, seed)
    exact = oracles.BTOracle(oracle.reward, temperature=1e-6)
    eval_ds = oracles.pair_dataset(ref, exact, os.path.join(workdir, "eval.jsonl"), num_eval,
                           seed + 7919)
    cfg = ref.model_cfg
    params = init_reward_params(cfg, jax.random.key(seed), backbone=ref.params)
    it = Mapped(BatchIterator(train_ds, batch_size=batch_size, seed=seed), pair_weight)
    optimizer, _ = make_optimizer(optimizer="adamw", lr=lr, warmup_steps=steps // 10,
                                  decay="cosine", total_steps=steps, grad_clip=1.0)
    loop = LoopConfig(workdir=os.path.join(workdir, "run"), total_steps=steps, seed=seed,
                      checkpoint_every=steps, keep_checkpoints=1, async_checkpoints=False,
                      progress_bar=False)
    state = train(loop, objective=bradley_terry_objective(cfg), optimizer=optimizer,
                  params=params, model_cfg=cfg, train_iter=it,
                  logical_axes=reward_logical_axes(cfg))
    eval_batches = [pair_weight(b) for b in BatchIterator(
        eval_ds, batch_size=batch_size, shuffle=False, num_epochs=1)]
    params = state.params
    return Proxy(cfg, params, pairwise_accuracy(cfg, params, eval_batches), len(train_ds))
