"""Best-of-N: n completions per prompt from a Sampler, scored, the best one kept per prompt.

    score_fn = make_score_fn(RewardScorer(rm_cfg, rm_params, tokenizer))  # jaxalign.reward
    best = best_of_n(sampler, prompts, score_fn=score_fn, n=16, temperature=0.7)
    best.texts[p], best.scores[p], best.index[p], best.all_scores[p]

The baseline GenARM and ARGS are compared with at equal reward model: its cost is n full
completions per prompt plus n reward-model passes, where ARGS pays k reward-model tokens per
step. `score_fn(prompts, completions) -> [N * K]` is the grow step's: every prompt repeated for
its n consecutive completions (prompt-major), completions as texts (stop token excluded) when
the sampler has a tokenizer, else as token id lists (stop token excluded as well).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from jaxalign.sampling.output import SampleOutput
from jaxalign.sampling.sampler import Sampler


@dataclasses.dataclass
class BestOfN:
    """The best of n completions of each of N prompts; T = max_new_tokens."""

    tokens: np.ndarray  # [N, T] int32: the best completion, pad_id after its end
    lengths: np.ndarray  # [N] int32, the stop token included
    index: np.ndarray  # [N] int64: which of the n samples (the first of equal scores)
    scores: np.ndarray  # [N] float32: its score
    all_scores: np.ndarray  # [N, K] float32: every sample's score
    texts: list[str] | None  # the best completions' texts (without a tokenizer: None)
    samples: SampleOutput  # all N x K samples


def completions(out: SampleOutput) -> list:
    """The P * n completions, prompt-major: texts, or token id lists without the stop token."""
    if out.texts is not None:
        return [t for row in out.texts for t in row]
    P, n = out.lengths.shape
    ends = out.lengths - (out.stop_reason == "stop")
    return [out.tokens[p, j, :ends[p, j]].tolist() for p in range(P) for j in range(n)]


def best_of_n(sampler: Sampler, prompts: Sequence | None = None, *,
              score_fn: Callable[[list, list], Sequence[float]], n: int,
              prompt_ids: Sequence[Sequence[int]] | None = None, **sample_kw) -> BestOfN:
    """Samples n completions per prompt (`sampler(prompts, n=n, **sample_kw)`), scores them
    with one `score_fn` call, and keeps each prompt's highest-scoring one (the first on ties).

    sample_kw: the sampler's arguments (temperature, top_p, max_new_tokens, seed, ids, ...).
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n (samples per prompt) must be an int >= 1, got {n!r}")
    out = sampler(prompts, prompt_ids=prompt_ids, n=n, **sample_kw)
    given = list(prompts) if prompts is not None else [list(p) for p in prompt_ids]
    P = len(given)
    scores = np.asarray(score_fn([p for p in given for _ in range(n)], completions(out)),
                        np.float32)
    if scores.size != P * n:
        raise ValueError(f"score_fn returned {scores.shape} scores for {P} prompts x {n} "
                         f"samples: expected [{P * n}] (or [{P}, {n}])")
    scores = scores.reshape(P, n)
    if np.isnan(scores).any():
        raise ValueError(f"score_fn returned NaN for (prompt, sample) "
                         f"{[tuple(int(i) for i in x) for x in np.argwhere(np.isnan(scores))]}")
    index = np.argmax(scores, axis=1)  # the first maximum
    rows = np.arange(P)
    return BestOfN(
        tokens=out.tokens[rows, index], lengths=out.lengths[rows, index], index=index,
        scores=scores[rows, index], all_scores=scores,
        texts=None if out.texts is None else [out.texts[p][index[p]] for p in rows],
        samples=out)
