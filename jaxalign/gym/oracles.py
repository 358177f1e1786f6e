"""Preference oracles with known ground truth, and preference datasets labelled by them.

    oracle = BTOracle(tasks.sentiment, temperature=0.5)  # P(y1 > y2) = sigma((r1 - r2) / T)
    p = oracle.prob(prompts, y1, y2)                       # float [B]
    rows = preference_rows(sampler, prompts, oracle, seed=0)   # JSONL rows from ref samples

`CyclicOracle` is intransitive: a completion's style is the word class (word index mod 3)
it uses most; style s beats style s+1 (mod 3) with probability 1/2 + margin, so
rock < paper < scissors < rock: no scalar reward represents it (SPPO's setting).
Oracles take token lists (prompt ids, completion ids); a completion's EOS and padding are
ignored.
"""

from __future__ import annotations

import json

import numpy as np

from jaxalign import io
from jaxalign.gym import language as L
from jaxalign.gym import tasks


class BTOracle:
    """Bradley-Terry over a true reward: P(y1 > y2) = sigmoid((r(y1) - r(y2)) / temperature);
    temperature -> 0 is a noiseless judge, larger temperatures flip more labels."""

    def __init__(self, reward: tasks.Reward, temperature: float = 0.5):
        self.reward, self.temperature = reward, temperature

    def prob(self, prompts, y1, y2) -> np.ndarray:
        r1, r2 = tasks.score(self.reward, prompts, y1), tasks.score(self.reward, prompts, y2)
        z = (r1.astype(np.float64) - r2) / max(self.temperature, 1e-12)
        return np.exp(-np.logaddexp(0.0, -z))  # sigmoid(z), no overflow

    def label(self, prompts, y1, y2, rng: np.random.Generator) -> np.ndarray:
        """bool [B]: True where y1 is preferred (a Bernoulli draw of `prob`)."""
        return rng.random(len(prompts)) < self.prob(prompts, y1, y2)


def style(completion) -> int:
    """0, 1 or 2: the word class (index in WORDS mod 3) used most (ties: lowest); -1 if none."""
    counts = np.zeros(3, int)
    for t in completion:
        name = L.VOCAB[int(t)]
        if name in L.WORDS:
            counts[L.WORDS.index(name) % 3] += 1
    return int(np.argmax(counts)) if counts.any() else -1


class CyclicOracle:
    """Intransitive preferences among the three styles (module docstring)."""

    def __init__(self, margin: float = 0.3):
        if not 0 < margin <= 0.5:
            raise ValueError(f"margin must be in (0, 0.5], got {margin}")
        self.margin = margin

    def style_prob(self, s1: int, s2: int) -> float:
        if s1 < 0 or s2 < 0 or s1 == s2:
            return 0.5
        return 0.5 + self.margin if (s2 - s1) % 3 == 1 else 0.5 - self.margin

    def prob(self, prompts, y1, y2) -> np.ndarray:
        del prompts
        return np.array([self.style_prob(style(a), style(b)) for a, b in zip(y1, y2)])

    def label(self, prompts, y1, y2, rng: np.random.Generator) -> np.ndarray:
        return rng.random(len(y1)) < self.prob(prompts, y1, y2)


def strip(tokens, length) -> list[int]:
    """A sampled completion's tokens without its EOS / padding."""
    return [int(t) for t in tokens[:length] if int(t) > 3]


def preference_rows(sampler, prompts, oracle, *, pairs: int = 1, seed: int = 0,
                    max_new_tokens: int = 24, skip_ties: bool = True) -> list[dict]:
    """`pairs` labelled pairs per prompt from 2 * pairs samples of `sampler` (temperature 1).

    Rows are {"prompt", "chosen", "rejected"} strings (completions start with a space, so
    prompt + completion is the tokenizer's input); empty completions and identical pairs are
    skipped (and ties in the true reward with `skip_ties`, which carry no signal).
    """
    out = sampler(prompt_ids=prompts, n=2 * pairs, max_new_tokens=max_new_tokens, seed=seed)
    rng = np.random.default_rng(seed)
    P, ys1, ys2 = [], [], []
    for i, p in enumerate(prompts):
        for j in range(pairs):
            a = strip(out.tokens[i, 2 * j], out.lengths[i, 2 * j])
            b = strip(out.tokens[i, 2 * j + 1], out.lengths[i, 2 * j + 1])
            if a and b and a != b:
                P.append(p), ys1.append(a), ys2.append(b)
    prob = oracle.prob(P, ys1, ys2)
    first = rng.random(len(P)) < prob
    rows = []
    for p, a, b, pr, f in zip(P, ys1, ys2, prob, first):
        if skip_ties and pr == 0.5:
            continue
        w, l = (a, b) if f else (b, a)
        rows.append({"prompt": L.text(p), "chosen": " " + L.text(w), "rejected": " " + L.text(l)})
    return rows


def write_jsonl(path: str, rows: list[dict]) -> str:
    return io.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def pair_dataset(ref, oracle, path: str, num_prompts: int, seed: int, pairs: int = 1):
    """Preference JSONL at `path` from the reference's samples on `num_prompts` fresh text
    prompts, labelled by `oracle`, read back as a `load_dataset("preference")` dataset."""
    from jaxalign.data import load_dataset
    from jaxalign.sampling import Sampler

    sampler = Sampler(ref.model_cfg, ref.params, ref.tokenizer, max_len=64)
    prompts = ref.language.sample_prompts(num_prompts, seed, "text")
    write_jsonl(path, preference_rows(sampler, prompts, oracle, pairs=pairs, seed=seed))
    ds, _ = load_dataset("preference", path, ref.tokenizer, max_length=32, max_prompt_length=8)
    return ds
