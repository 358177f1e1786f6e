"""A small generated preference set with a visible property, and its word-level tokenizer.

Until the synthetic gym lands this is the DPO smoke task: prompts are short random phrases;
both completions are random phrases of the same words, but the chosen one is drawn with
"positive" words and the rejected one with "negative" words. A policy trained with DPO should
prefer positive words (`positive_fraction` measures it on generated text).
"""

from __future__ import annotations

import json
import os

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from jaxalign import io

POSITIVE = ("good", "great", "happy", "bright", "kind", "calm", "warm", "fine")
NEGATIVE = ("bad", "awful", "sad", "dark", "cruel", "angry", "cold", "poor")
NEUTRAL = ("the", "a", "day", "cat", "house", "tree", "river", "walk", "book", "road", "sky",
           "is", "was", "very", "and", "then", "we", "they", "saw", "it")
PROMPT_WORDS = ("tell", "me", "about", "describe", "write", "story", "of", "your", "morning",
                "city", "friend", "garden")
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One word, one token; BOS prepended like Llama's tokenizer; ids 0-3 are special."""
    words = list(SPECIALS) + sorted(set(POSITIVE + NEGATIVE + NEUTRAL + PROMPT_WORDS))
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def _phrase(rng, pool, n_special, length):
    words = list(rng.choice(NEUTRAL, length - n_special)) + list(rng.choice(pool, n_special))
    rng.shuffle(words)
    return " " + " ".join(words)  # completions continue the prompt text (HH-RLHF style)


def preference_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(PROMPT_WORDS, rng.integers(3, 6)))
        length = int(rng.integers(5, 9))
        k = int(rng.integers(1, 4))
        rows.append({"prompt": prompt, "chosen": _phrase(rng, POSITIVE, k, length),
                     "rejected": _phrase(rng, NEGATIVE, k, length)})
    return rows


def write_preference_jsonl(path: str, n: int, seed: int) -> str:
    """Writes the set once (atomically); later calls reuse the file."""
    if not os.path.exists(path):
        io.write_atomic(path, "".join(json.dumps(r) + "\n" for r in preference_rows(n, seed)))
    return path


def positive_fraction(texts) -> float:
    """Share of sentiment words that are positive, over all texts (0.5 if none)."""
    words = " ".join(texts).split()
    pos = sum(w in POSITIVE for w in words)
    neg = sum(w in NEGATIVE for w in words)
    return pos / (pos + neg) if pos + neg else 0.5
