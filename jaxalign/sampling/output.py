"""What the Sampler returns: completions of N prompts, K = n samples each, as numpy arrays."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass
class SampleOutput:
    """Completions of N prompts, K = n samples each; G guides (0: unguided); T tokens per
    completion at most: min(max_new_tokens, the sampler's max_len - 1)."""

    tokens: np.ndarray  # [N, K, T] int32, pad_id after each completion's end
    lengths: np.ndarray  # [N, K] int32, the stop token included
    logprobs: np.ndarray  # [N, K, T] float32 under the sampling distribution, 0 after the end
    model_logprobs: np.ndarray  # [N, K, T] float32 under the unmodified policy
    # [N, K, G, T] float32: log pi_r_i(y_t | x, y_<t) of each token under guide i, normalised
    # over the vocabulary the models share; 0 after the end. [N, K, 0, T] without guides.
    guide_logprobs: np.ndarray
    stop_reason: np.ndarray  # [N, K] "stop" (ended on a stop id) or "length" (budget / cache)
    # decoded without the stop token, as the text continues the prompt's (`completion_text`:
    # prompt + text re-tokenises to prompt + completion); None without a tokenizer
    texts: list[list[str]] | None
    prompt_tokens: list[list[int]]

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def guide_rewards(self) -> np.ndarray:
        """[N, K, G] float32: each guide's GenARM reward r_i(x, y) = sum_t log pi_r_i(y_t | .)."""
        return self.guide_logprobs.sum(-1)

    @staticmethod
    def merge(parts: Sequence[tuple[np.ndarray, "SampleOutput"]], count: int) -> "SampleOutput":
        """One output for `count` prompts from (prompt indices, output) parts."""
        if not parts:
            raise ValueError("no prompts")
        first = parts[0][1]
        arrays = {}
        for name in ("tokens", "lengths", "logprobs", "model_logprobs", "guide_logprobs",
                     "stop_reason"):
            x = getattr(first, name)
            arrays[name] = np.empty((count,) + x.shape[1:], x.dtype)
            for index, part in parts:
                arrays[name][index] = getattr(part, name)
        texts, prompt_tokens = [None] * count, [None] * count
        for index, part in parts:
            for k, i in enumerate(index):
                prompt_tokens[i] = part.prompt_tokens[k]
                if part.texts is not None:
                    texts[i] = part.texts[k]
        return SampleOutput(texts=None if first.texts is None else texts,
                            prompt_tokens=prompt_tokens, **arrays)
