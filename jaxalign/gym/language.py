"""The gym's synthetic language: a seeded stochastic process with exact sequence probabilities.

Two kinds of prompt, both starting with BOS:

  text   `<s> #topic kw1 kw2 :`  a topic and two keywords; the completion is a sparse Markov
         chain over the 32 words whose table depends on the topic (each previous word has
         `successors` possible next words with Dirichlet weights, reweighted by a per-topic
         log-weight of each word, plus EOS with `eos_prob`), of order 2 (the word
         two steps back is forbidden: no `a b a`, so at most two equal words in a row), with
         the prompt's keywords up-weighted by `exp(keyword_bonus)`; EOS is forced at
         completion position `max_completion - 1`.
  arith  `<s> add a b =`         the completion is one digit, the right one ((a + b) mod 10)
         with probability `arith_correct`, then EOS with probability `arith_clean_end` (else one
         stray word, then EOS): the verifiable task, with answer-format errors.

`Language.next_probs` is the whole process, vectorised over a batch of prompts; sampling and
`logprobs` (the exact log-probability of any completion) both go through it, so they agree by
construction. `tokenizer()` is the word-level tokenizer (one symbol, one token).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS = 0, 1, 2
TOPICS = ("#news", "#sport", "#food", "#travel")
POSITIVE = ("good", "great", "happy", "kind", "bright", "calm")
NEGATIVE = ("bad", "sad", "awful", "cruel", "dark", "angry")
HARMFUL = ("poison", "weapon", "steal", "hurt")
NEUTRAL = ("the", "a", "day", "cat", "house", "tree", "river", "walk", "book", "road", "sky",
           "city", "friend", "garden", "music", "game")
WORDS = POSITIVE + NEGATIVE + HARMFUL + NEUTRAL  # the 32 words of completions
DIGITS = tuple(str(d) for d in range(10))
OPS = ("add", "=", ":")
VOCAB = SPECIALS + TOPICS + WORDS + DIGITS + OPS
ID = {w: i for i, w in enumerate(VOCAB)}
WORD_IDS = np.array([ID[w] for w in WORDS])
DIGIT_IDS = np.array([ID[d] for d in DIGITS])
KEYWORD_POOL = NEUTRAL[2:12]  # nouns a prompt can ask for
TEXT, ARITH = 0, 1


@dataclasses.dataclass(frozen=True)
class LanguageConfig:
    seed: int = 0
    successors: int = 6
    concentration: float = 1.0
    topic_scale: float = 1.0  # std of the per-topic log-weight of each word
    eos_prob: float = 0.1
    keyword_bonus: float = 1.0
    harmful_keyword_prob: float = 0.25  # a keyword slot asks for a harmful word
    arith_fraction: float = 0.15
    arith_correct: float = 0.3
    arith_clean_end: float = 0.9
    max_completion: int = 24  # tokens, EOS included


def tokenizer() -> PreTrainedTokenizerFast:
    """One symbol, one token; BOS prepended; ids 0-3 are <pad> <s> </s> <unk>."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def text(ids) -> str:
    """Space-joined symbols, specials dropped."""
    return " ".join(VOCAB[int(i)] for i in ids if int(i) > 3)


@dataclasses.dataclass
class Prompts:
    """Parsed prompts, one row each: kind, topic, keyword indicator over the vocab, answer."""

    kind: np.ndarray  # int [B]: TEXT or ARITH
    topic: np.ndarray  # int [B]: index into TOPICS (0 for arith)
    keywords: np.ndarray  # bool [B, V]
    answer: np.ndarray  # int [B]: the digit token id of the right answer (arith), else -1


def parse(prompts: list[list[int]]) -> Prompts:
    B, V = len(prompts), len(VOCAB)
    kind, topic = np.zeros(B, int), np.zeros(B, int)
    kw, ans = np.zeros((B, V), bool), np.full(B, -1)
    for b, p in enumerate(prompts):
        p = [int(t) for t in p if int(t) > 3]
        if p and p[0] == ID["add"]:
            kind[b] = ARITH
            digits = [VOCAB[t] for t in p if VOCAB[t] in DIGITS]
            ans[b] = ID[str(sum(int(d) for d in digits) % 10)]
        else:
            topic[b] = TOPICS.index(VOCAB[p[0]]) if p and VOCAB[p[0]] in TOPICS else 0
            for t in p[1:]:
                if VOCAB[t] in WORDS:
                    kw[b, t] = True
    return Prompts(kind, topic, kw, ans)


class Language:
    """The process of the module docstring, its tables drawn from `cfg.seed`."""

    def __init__(self, cfg: LanguageConfig = LanguageConfig()):
        self.cfg = cfg
        V = len(VOCAB)
        rng = np.random.default_rng(cfg.seed)
        # table[topic, prev, next]: sparse successors of `prev` (shared by topics) reweighted
        # by a per-topic bias on each word: the topic changes the transition table
        bias = rng.normal(0.0, cfg.topic_scale, (len(TOPICS), V))
        table = np.zeros((len(TOPICS), V, V))
        for prev in [*WORD_IDS, ID[":"]]:
            nxt = rng.choice(WORD_IDS, cfg.successors, replace=False)
            w = rng.dirichlet(np.full(cfg.successors, cfg.concentration))
            eos = 0.0 if prev == ID[":"] else cfg.eos_prob
            for t in range(len(TOPICS)):
                wt = w * np.exp(bias[t, nxt])
                table[t, prev, nxt] = (1 - eos) * wt / wt.sum()
                table[t, prev, EOS] = eos
        self.table = table

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    def sample_prompts(self, n: int, seed: int, kind: str = "mixed") -> list[list[int]]:
        """n prompt token lists; kind "mixed" (the language's own mix), "text" or "arith"."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            arith = {"mixed": rng.random() < self.cfg.arith_fraction, "text": False,
                     "arith": True}[kind]
            if arith:
                a, b = rng.integers(0, 10, 2)
                out.append([BOS, ID["add"], ID[str(a)], ID[str(b)], ID["="]])
            else:
                kws = [rng.choice(HARMFUL) if rng.random() < self.cfg.harmful_keyword_prob
                       else rng.choice(KEYWORD_POOL) for _ in range(2)]
                out.append([BOS, ID[rng.choice(TOPICS)], *(ID[k] for k in kws), ID[":"]])
        return out

    def next_probs(self, p: Prompts, prev2: np.ndarray, prev1: np.ndarray, pos: int) -> np.ndarray:
        """[B, V] float64: the next-token distribution at completion position `pos` (0-based),
        given the two previous tokens (prev1 = ":" and prev2 = -1 at the start)."""
        c, B, V = self.cfg, len(prev1), len(VOCAB)
        rows = np.arange(B)
        w = self.table[p.topic, prev1] * np.exp(c.keyword_bonus * p.keywords)
        ban = np.isin(prev2, WORD_IDS)
        w[rows[ban], prev2[ban]] = 0.0  # order 2: never back to the word two steps ago
        if pos >= c.max_completion - 1:
            w = np.zeros_like(w)
            w[:, EOS] = 1.0
        w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)  # arith rows: all 0
        arith = np.zeros((B, V))
        if pos == 0:
            arith[:, DIGIT_IDS] = (1 - c.arith_correct) / 9
            arith[rows, np.maximum(p.answer, 0)] = c.arith_correct
        elif pos == 1:
            arith[:, WORD_IDS] = (1 - c.arith_clean_end) / len(WORD_IDS)
            arith[:, EOS] = c.arith_clean_end
        else:
            arith[:, EOS] = 1.0
        return np.where((p.kind == ARITH)[:, None], arith, w)

    def sample(self, prompts: list[list[int]], seed: int) -> list[list[int]]:
        """One completion per prompt (token ids, EOS included)."""
        rng = np.random.default_rng(seed)
        p, B = parse(prompts), len(prompts)
        prev2, prev1 = np.full(B, -1), np.full(B, ID[":"])
        done = np.zeros(B, bool)
        out = [[] for _ in range(B)]
        for pos in range(self.cfg.max_completion):
            probs = self.next_probs(p, prev2, prev1, pos)
            u = rng.random(B)[:, None]
            nxt = np.minimum((probs.cumsum(-1) < u).sum(-1), len(VOCAB) - 1)
            for b in np.flatnonzero(~done):
                out[b].append(int(nxt[b]))
            done |= nxt == EOS
            prev2, prev1 = prev1, nxt
            if done.all():
                break
        return out

    def logprobs(self, prompts: list[list[int]], completions: list[list[int]]) -> np.ndarray:
        """[B, T] float64 exact log-probs of each completion token (0 after its end; T = the
        longest completion). A token the process never emits there gets -inf."""
        p, B = parse(prompts), len(prompts)
        T = max(len(c) for c in completions)
        toks = np.full((B, T), PAD)
        for b, c in enumerate(completions):
            toks[b, :len(c)] = c
        out = np.zeros((B, T))
        prev2, prev1 = np.full(B, -1), np.full(B, ID[":"])
        with np.errstate(divide="ignore"):
            for pos in range(T):
                lp = np.log(self.next_probs(p, prev2, prev1, pos)[np.arange(B), toks[:, pos]])
                live = np.array([pos < len(c) for c in completions])
                out[:, pos] = np.where(live, lp, 0.0)
                prev2, prev1 = prev1, toks[:, pos]
        return out
