"""Batched scoring of (prompt, completion) pairs with a scalar reward model, and the rewards'
normalisations.

    scorer = RewardScorer(cfg, params, tokenizer, mesh=make_mesh(data=-1), max_length=512)
    r = scorer(prompts, completions)                        # float32 [N]: a grow step's score_fn
    score_fn = make_score_fn(scorer, normalize="sigmoid")   # ReST: rewards on [0, 1]
    score_fn = make_score_fn(scorer, baseline=golden)       # CGPO: sigma(r(s, a) - r(s, a_bar))

Pairs are tokenised exactly as the training data of the policy is (`jaxalign.data.Encoder`:
same chat template, BOS, EOS appended to the completion, same truncation rules), then scored
by `BatchedForward` (length buckets, batch over the mesh's data axes, jitted).

Normalisations (numpy, host side):
  sigmoid_scale      sigma(r), on [0, 1] (ReST thresholds tau in [0, 1])
  percentile_rank    per prompt: (#lower + #tied/2) / (K - 1) among the prompt's K samples,
                     on [0, 1], 1 for the best; 1/2 for a prompt with a single sample
  calibrated         sigma(r(s, a) - r(s, a_bar)), `jaxalign.losses.cgpo.calibrated_reward`
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.data import Encoder, bucket_lengths
from jaxalign.data.tokenize import truncate
from jaxalign.losses.cgpo import calibrated_reward
from jaxalign.reward.batched import BatchedForward
from jaxalign.reward.model import reward_logical_axes, reward_scores


class RewardScorer:
    """`scorer(prompts, completions) -> np.ndarray float32 [N]`.

    tokenizer: a transformers tokenizer or a `jaxalign.data.Encoder` (pass the policy's, with
      its `chat` setting, so the reward model sees what the policy was trained on).
    max_length / max_prompt_length / truncation_mode: the DPO reference's rules (tokenize.py).
    Buckets: powers of two from `min_bucket` up to max_length; at most one compile each.
    """

    def __init__(self, cfg, params, tokenizer: Any, *, mesh=None, batch_size: int = 32,
                 max_length: int = 512, max_prompt_length: int = 256,
                 truncation_mode: str = "keep_end", chat: bool | None = None,
                 min_bucket: int = 64):
        self.cfg = cfg
        self.encoder = tokenizer if isinstance(tokenizer, Encoder) else Encoder(tokenizer,
                                                                                 chat=chat)
        self.cut = dict(max_length=max_length, max_prompt_length=max_prompt_length,
                        truncation_mode=truncation_mode, bos_id=self.encoder.bos_id)
        self.forward = BatchedForward(
            lambda p, t, m: reward_scores(cfg, p, t, m), params, pad_id=self.encoder.pad_id,
            buckets=bucket_lengths(max_length, min_length=min(min_bucket, max_length)),
            batch_size=batch_size, mesh=mesh, logical_axes=reward_logical_axes(cfg))

    def encode(self, prompt, completion, loc: str = "?") -> list[int]:
        """The token ids the reward model reads: prompt + completion (+ EOS), truncated."""
        p, c = self.encoder.encode(prompt, completion, loc)
        p, (c,) = truncate(p, [c], **self.cut)
        return p + c

    def __call__(self, prompts: Sequence, completions: Sequence) -> np.ndarray:
        if len(prompts) != len(completions):
            raise ValueError(f"RewardScorer: {len(prompts)} prompts but {len(completions)} "
                             "completions")
        seqs = [self.encode(p, c, f"pair {i}") for i, (p, c) in
                enumerate(zip(prompts, completions))]
        return self.forward(seqs).astype(np.float32)

    score = __call__


def sigmoid_scale(rewards) -> np.ndarray:
    """sigma(r) in float32: ReST's [0, 1] reward scale."""
    r = np.asarray(rewards, np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * r))).astype(np.float32)  # stable sigma(r)


def _group_ids(groups: Sequence) -> np.ndarray:
    ids: dict = {}
    return np.array([ids.setdefault(g if isinstance(g, str) else repr(g), len(ids))
                     for g in groups], np.int64)


def percentile_rank(rewards, groups: Sequence) -> np.ndarray:
    """Per group (e.g. the prompt): (#lower + #tied others / 2) / (K - 1), float32 on [0, 1]."""
    r = np.asarray(rewards, np.float64)
    g = _group_ids(groups)
    if r.shape != g.shape:
        raise ValueError(f"percentile_rank: rewards {r.shape} and groups {g.shape} differ")
    out = np.full(r.shape, 0.5, np.float64)
    for k in np.unique(g):
        idx = np.flatnonzero(g == k)
        if len(idx) < 2:
            continue
        v = r[idx]
        lower = (v[None, :] < v[:, None]).sum(1)
        tied = (v[None, :] == v[:, None]).sum(1) - 1
        out[idx] = (lower + 0.5 * tied) / (len(idx) - 1)
    return out.astype(np.float32)


def calibrated(rewards, baseline_rewards) -> np.ndarray:
    """CGPO's calibrated reward sigma(r(s, a) - r(s, a_bar)), float32 [N]."""
    return np.asarray(calibrated_reward(rewards=np.asarray(rewards, np.float32),
                                        baseline_rewards=np.asarray(baseline_rewards,
                                                                    np.float32)))


def make_score_fn(scorer: Callable, *, normalize: str | None = None,
                  baseline: Mapping | Callable | None = None
                  ) -> Callable[[list, list], np.ndarray]:
    """A `score_fn(prompts, completions) -> float32 [N]` for grow / selection steps.

    normalize: None (raw r), "sigmoid" (sigma(r)) or "percentile" (per-prompt rank).
    baseline: a_bar per prompt (a mapping prompt -> completion, or a function); gives CGPO's
      calibrated reward sigma(r(s, a) - r(s, a_bar)) (a_bar scored once per distinct prompt).
    """
    if normalize not in (None, "sigmoid", "percentile"):
        raise ValueError(f"normalize: expected None/'sigmoid'/'percentile', got {normalize!r}")
    if baseline is not None and normalize is not None:
        raise ValueError("make_score_fn: the calibrated reward is already on [0, 1]; give "
                         "either `baseline` or `normalize`")

    def score_fn(prompts, completions):
        r = scorer(prompts, completions)
        if baseline is not None:
            keys = _group_ids(prompts)
            first = {int(k): i for i, k in reversed(list(enumerate(keys)))}
            unique = [prompts[first[k]] for k in sorted(first)]
            a_bar = [baseline(p) if callable(baseline) else baseline[p] for p in unique]
            r_bar = scorer(unique, a_bar)[keys]
            return calibrated(r, r_bar)
        if normalize == "sigmoid":
            return sigmoid_scale(r)
        if normalize == "percentile":
            return percentile_rank(r, prompts)
        return r

    return score_fn
