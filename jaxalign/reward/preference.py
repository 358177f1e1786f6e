"""Preference models for SPPO: K x K win-probability matrices over a prompt's K samples.

    P_NxKxK = bt_preference_matrix(scores_NxK)                 # sigma(s_i - s_j), 1/2 diagonal
    P_NxKxK = ScorePreferenceModel(scorer)(prompts, samples)   # from a scalar reward model
    P_NxKxK = PairwiseJudge(cfg, params, tok)(prompts, samples)  # from a generative judge

Either feeds `jaxalign.losses.sppo.win_rates_from_matrix` (or give the scores to
`win_rates_from_scores`). `samples` is a list of N lists of K completions.

The pairwise judge is an LM prompted with both responses (template over `prompt`, `a`, `b`);
q(a, b) = p("A") / (p("A") + p("B")) at the position after the prompt. Judges prefer one
position, so each pair is asked in both orders and P(i > j) = [q(i, j) + 1 - q(j, i)] / 2.
The matrix is filled from the upper triangle, P(j > i) = 1 - P(i > j), so
P(i > j) + P(j > i) = 1 holds exactly in float32, and the diagonal is 1/2. This removes
position bias but not intransitivity (SPPO does not need transitivity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from jaxalign.losses.sppo import bt_preference_matrix  # pure arrays: lives with SPPO's losses
from jaxalign.reward.probe import TokenProbe

DEFAULT_TEMPLATE = ("Which response answers the prompt better?\n\nPrompt: {prompt}\n\n"
                    "Response A: {a}\n\nResponse B: {b}\n\nThe better response is")


def _check_samples(prompts: Sequence, samples: Sequence[Sequence[str]]) -> int:
    if len(prompts) != len(samples) or not len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(samples)} sample lists")
    ks = {len(s) for s in samples}
    if len(ks) != 1 or min(ks) < 1:
        raise ValueError(f"every prompt needs the same number K >= 1 of samples, got {sorted(ks)}")
    return ks.pop()


class ScorePreferenceModel:
    """K x K matrices from a scalar `score_fn(prompts, completions) -> [N]` (Bradley-Terry)."""

    def __init__(self, score_fn: Callable):
        self.score_fn = score_fn

    def scores(self, prompts, samples) -> np.ndarray:
        K = _check_samples(prompts, samples)
        flat_p = [p for p in prompts for _ in range(K)]
        flat_c = [c for s in samples for c in s]
        return np.asarray(self.score_fn(flat_p, flat_c), np.float32).reshape(len(prompts), K)

    def __call__(self, prompts, samples) -> np.ndarray:
        return np.asarray(bt_preference_matrix(self.scores(prompts, samples)))


def order_averaged(q_NxKxK: np.ndarray) -> np.ndarray:
    """P(i > j) = [q(i, j) + 1 - q(j, i)] / 2 on i < j; P(j > i) = 1 - P(i > j); P_ii = 1/2.

    `q[n, i, j]`: P(first > second) with sample i shown first (as "A"), float32.
    """
    q = np.asarray(q_NxKxK, np.float32)
    K = q.shape[-1]
    upper = np.triu(np.ones((K, K), bool), k=1)
    avg = np.float32(0.5) * (q + (np.float32(1) - np.swapaxes(q, -1, -2)))
    P = np.where(upper, avg, np.float32(0.5))
    P = np.where(upper.T, np.float32(1) - np.swapaxes(P, -1, -2), P)
    return P.astype(np.float32)


class PairwiseJudge:
    """`judge(prompts, samples) -> float32 [N, K, K]` from an LM's "A" vs "B" next-token odds.

    template: `str.format` over `prompt`, `a`, `b`. token_a / token_b: the designated tokens
    (strings that encode to one token, or ids). `probe_kw` go to `TokenProbe`.
    """

    def __init__(self, cfg, params, tokenizer, *, template: str = DEFAULT_TEMPLATE,
                 token_a: int | str = " A", token_b: int | str = " B", **probe_kw):
        self.template = template
        self.probe = TokenProbe(cfg, params, tokenizer, (token_a, token_b), **probe_kw)

    def first_wins(self, prompts, firsts, seconds) -> np.ndarray:
        """q = p(A) / (p(A) + p(B)) for each (prompt, shown first, shown second), float32."""
        texts = [self.template.format(prompt=p, a=a, b=b)
                 for p, a, b in zip(prompts, firsts, seconds)]
        logp = self.probe(texts).astype(np.float64)
        return (1.0 / (1.0 + np.exp(logp[:, 1] - logp[:, 0]))).astype(np.float32)

    def __call__(self, prompts, samples) -> np.ndarray:
        K = _check_samples(prompts, samples)
        pairs = [(n, i, j) for n in range(len(prompts)) for i in range(K) for j in range(K)
                 if i != j]
        q = np.full((len(prompts), K, K), 0.5, np.float32)
        if pairs:
            got = self.first_wins([prompts[n] for n, _, _ in pairs],
                                  [samples[n][i] for n, i, _ in pairs],
                                  [samples[n][j] for n, _, j in pairs])
            n, i, j = map(np.array, zip(*pairs))
            q[n, i, j] = got
        return order_averaged(q)
