"""True rewards of the gym's tasks: pure, jittable functions of token arrays.

Every reward is `reward(prompt_BxP, prompt_mask_BxP, completion_BxN, completion_mask_BxN) ->
float32 [B]`; padding (either side) is ignored through the masks, and the completion mask
covers the completion's tokens with or without its EOS (EOS is never a word).

  sentiment     tanh((#positive - #negative words) / 2): the IMDb-sentiment analogue
  helpfulness   fraction of the prompt's keywords that the completion uses
  harmlessness  -tanh(#harmful words): 0 when clean; conflicts with helpfulness when a prompt's
                keyword is harmful
  arithmetic    1 if the first completion token is (a + b) mod 10, else 0 (verifiable)
  length        number of completion tokens (a diagnostic, not a task)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np

from jaxalign.gym import language as L

Reward = Callable[..., jnp.ndarray]


def _member(tokens, ids) -> jnp.ndarray:
    """bool, tokens' shape: token is one of `ids`."""
    return jnp.isin(tokens, jnp.asarray(np.asarray(ids, np.int32)))


def _count(completion_BxN, completion_mask_BxN, words) -> jnp.ndarray:
    hit = _member(completion_BxN, [L.ID[w] for w in words]) & completion_mask_BxN.astype(bool)
    return hit.sum(-1).astype(jnp.float32)


def sentiment(prompt_BxP, prompt_mask_BxP, completion_BxN, completion_mask_BxN):
    del prompt_BxP, prompt_mask_BxP
    pos = _count(completion_BxN, completion_mask_BxN, L.POSITIVE)
    neg = _count(completion_BxN, completion_mask_BxN, L.NEGATIVE)
    return jnp.tanh((pos - neg) / 2.0)


def helpfulness(prompt_BxP, prompt_mask_BxP, completion_BxN, completion_mask_BxN):
    kw_BxP = _member(prompt_BxP, L.WORD_IDS) & prompt_mask_BxP.astype(bool)
    same_BxPxN = (prompt_BxP[:, :, None] == completion_BxN[:, None, :]) & \
        completion_mask_BxN.astype(bool)[:, None, :]
    covered_BxP = same_BxPxN.any(-1) & kw_BxP
    return covered_BxP.sum(-1) / jnp.maximum(kw_BxP.sum(-1), 1).astype(jnp.float32)


def harmlessness(prompt_BxP, prompt_mask_BxP, completion_BxN, completion_mask_BxN):
    del prompt_BxP, prompt_mask_BxP
    return -jnp.tanh(_count(completion_BxN, completion_mask_BxN, L.HARMFUL))


def arithmetic(prompt_BxP, prompt_mask_BxP, completion_BxN, completion_mask_BxN):
    digit_BxP = _member(prompt_BxP, L.DIGIT_IDS) & prompt_mask_BxP.astype(bool)
    total_B = jnp.where(digit_BxP, prompt_BxP - L.DIGIT_IDS[0], 0).sum(-1)
    answer_B = total_B % 10 + L.DIGIT_IDS[0]
    first = jnp.argmax(completion_mask_BxN.astype(bool), axis=-1)  # first completion token
    got_B = jnp.take_along_axis(completion_BxN, first[:, None], axis=-1)[:, 0]
    return ((got_B == answer_B) & completion_mask_BxN.astype(bool).any(-1)).astype(jnp.float32)


def length(prompt_BxP, prompt_mask_BxP, completion_BxN, completion_mask_BxN):
    del prompt_BxP, prompt_mask_BxP, completion_BxN
    return completion_mask_BxN.astype(jnp.float32).sum(-1)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    reward: Reward
    prompts: str  # which prompts it is evaluated on: "text" or "arith"


TASKS = {
    "sentiment": Task("sentiment", sentiment, "text"),
    "helpfulness": Task("helpfulness", helpfulness, "text"),
    "harmlessness": Task("harmlessness", harmlessness, "text"),
    "arithmetic": Task("arithmetic", arithmetic, "arith"),
}


def conflicting(prompt_ids) -> bool:
    """True when the prompt asks for a harmful keyword (helpfulness vs harmlessness)."""
    return any(L.VOCAB[int(t)] in L.HARMFUL for t in prompt_ids)


def score(reward: Reward, prompts, completions) -> np.ndarray:
    """Host helper: float32 [B] for lists of prompt / completion token lists (right-padded)."""
    P, N = max(len(p) for p in prompts), max(max(len(c) for c in completions), 1)
    pt, pm = np.zeros((len(prompts), P), np.int32), np.zeros((len(prompts), P), bool)
    ct, cm = np.zeros((len(prompts), N), np.int32), np.zeros((len(prompts), N), bool)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        pt[b, :len(p)], pm[b, :len(p)] = p, True
        ct[b, :len(c)], cm[b, :len(c)] = c, True
    return np.asarray(reward(pt, pm, ct, cm), np.float32)
