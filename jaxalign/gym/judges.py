"""Constraint judges of the gym (CGPO's rule-based judges) on `jaxalign.reward.Judge`.

They read the gym's text (one word = one token, space separated; prompts as `language.text`
writes them, completions as the sampler decodes them, without the EOS). Whether a completion
ended on EOS is `metadata["stop_reason"] == "stop"` when given (the sampler's stop_reason), else
a literal trailing `</s>`.

    moj = constraint_judges()            # MixtureOfJudges of the four below
    out = moj(prompts, completions, [{"stop_reason": r} for r in stop_reasons])
"""

from __future__ import annotations

import numpy as np

from jaxalign.gym import language as L
from jaxalign.reward.judges import Judge, MixtureOfJudges, Verdicts


def _words(s: str) -> list[str]:
    return [w for w in s.split() if w != "</s>"]


def _is_arith(prompt: str) -> bool:
    words = _words(prompt)
    return bool(words) and words[0] in ("add", "<s>") and "add" in words[:2]


class NoRepeatJudge(Judge):
    """Fails when some token appears k times in a row."""

    def __init__(self, k: int = 3, name: str = "no_repeat"):
        if k < 2:
            raise ValueError(f"judge {name!r}: k must be >= 2, got {k}")
        self.k, self.name = k, name

    def judge(self, prompts, completions, metadata):
        def ok(words):
            run = 1
            for a, b in zip(words, words[1:]):
                run = run + 1 if a == b else 1
                if run >= self.k:
                    return False
            return True
        return np.array([ok(_words(c)) for c in completions])


class LengthJudge(Judge):
    """Passes when min_tokens <= number of completion words <= max_tokens (EOS not counted)."""

    def __init__(self, min_tokens: int = 1, max_tokens: int = 16, name: str = "length"):
        self.min_tokens, self.max_tokens, self.name = min_tokens, max_tokens, name

    def judge(self, prompts, completions, metadata):
        n = np.array([len(_words(c)) for c in completions])
        return (n >= self.min_tokens) & (n <= self.max_tokens)


class EndsWithEOSJudge(Judge):
    """Passes when the completion ended on EOS (not cut by the token budget)."""

    name = "ends_with_eos"

    def judge(self, prompts, completions, metadata):
        return np.array([m["stop_reason"] == "stop" if "stop_reason" in m
                         else c.rstrip().endswith("</s>") for c, m in zip(completions, metadata)])


class AnswerFormatJudge(Judge):
    """On arithmetic prompts the completion must be exactly one digit; other prompts pass."""

    name = "answer_format"

    def judge(self, prompts, completions, metadata):
        return np.array([not _is_arith(p) or (len(w := _words(c)) == 1 and w[0] in L.DIGITS)
                         for p, c in zip(prompts, completions)])


class ArithmeticAnswerJudge(Judge):
    """On arithmetic prompts the first completion word must be (a + b) mod 10 (a correct but
    badly formatted answer passes here and fails `AnswerFormatJudge`); other prompts pass."""

    name = "arithmetic_answer"

    def judge(self, prompts, completions, metadata):
        out = []
        for p, c in zip(prompts, completions):
            if not _is_arith(p):
                out.append(True)
                continue
            answer = str(sum(int(w) for w in _words(p) if w in L.DIGITS) % 10)
            w = _words(c)
            out.append(bool(w) and w[0] == answer)
        return Verdicts(np.array(out))


def constraint_judges(max_repeat: int = 3, max_tokens: int = 16) -> MixtureOfJudges:
    return MixtureOfJudges([NoRepeatJudge(max_repeat), LengthJudge(1, max_tokens),
                            EndsWithEOSJudge(), AnswerFormatJudge()])
