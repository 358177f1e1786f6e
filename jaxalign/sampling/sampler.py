"""`Sampler`: prompts in, completions with log-probs out, data-parallel over a mesh.

    sampler = Sampler(cfg, params, tokenizer, mesh=make_mesh())    # or Sampler.from_pretrained(dir)
    out = sampler(["Tell me a joke."], n=4, temperature=0.7, top_p=0.9, max_new_tokens=256)
    out.texts[0][3], out.tokens[0, 3, :out.lengths[0, 3]], out.model_logprobs[0, 3]

Host side, before anything is traced: tokenize (jaxalign.data's Encoder: chat templates, BOS),
validate every argument (ValueError), sort the prompts by length (a prompt's completions do not
depend on its batch, so batching by length only saves padding), cut them into batches whose
row count and prompt length are bucketed (powers of two; rows a multiple of the data-parallel
size), so a run compiles a handful of programs. Batch i+1 is dispatched before batch i's
results are read back.

Multi-host: every process calls the sampler with its own prompts (e.g. its slice of the
dataset, with `ids=` their global indices so keys stay global) and the same number of them;
each batch is assembled with `jax.make_array_from_process_local_data` (rows over the mesh's
data/fsdp axes) and each process reads back only its own rows. The prompt-length bucket is
agreed across processes (the longest local prompt is all-gathered), so shapes always match.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxalign import sharding as shd
from jaxalign.data.batching import bucket_lengths
from jaxalign.data.tokenize import Encoder
from jaxalign.models import ModelConfig, Transformer, param_logical_axes
from jaxalign.sampling import loop, selection
from jaxalign.sampling.output import SampleOutput
from jaxalign.sampling.prompts import Batch, key_id, make_batches


def stop_ids_from_checkpoint(directory: str) -> tuple[int, ...]:
    """Stop ids of a HF checkpoint: generation_config.json's eos_token_id (int or list: Llama-3
    and chat models list several), else config.json's; () when neither has one."""
    for name in ("generation_config.json", "config.json"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path) as fh:
                eos = json.load(fh).get("eos_token_id")
            if eos is not None:
                return tuple(eos) if isinstance(eos, list) else (int(eos),)
    return ()


@dataclasses.dataclass(frozen=True)
class GuideModel:
    """A guide for `Sampler(guides=...)`: a causal LM sharing the tokenizer, and its weight."""

    model: Transformer | ModelConfig
    params: Any
    weight: float = 1.0
    combine: Callable = loop.weighted_sum


def _cfg(model) -> ModelConfig:
    return model.cfg if isinstance(model, Transformer) else model


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a row-sharded array (all of them on a single host)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


class Sampler:
    """Samples completions from a jaxalign Transformer (optionally guided by other LMs)."""

    def __init__(self, model: Transformer | ModelConfig, params, tokenizer=None, *, mesh=None,
                 max_len: int | None = None, buckets: Sequence[int] | None = None,
                 batch_size: int | None = None, stop_ids: Sequence[int] | int | None = None,
                 guides: Sequence[GuideModel] = (), vocab_size: int | None = None,
                 chat: bool | None = None, batch_invariant: bool = False):
        """batch_invariant: compile so that a row's floats do not depend on its batch at all
        (`loop.BATCH_INVARIANT_CPU`; on CPU only). Without it, tokens are the same whatever the
        batch but log-probs may differ in their last bits (see loop.py)."""
        cfg = self.cfg = _cfg(model)
        invariant = batch_invariant and jax.default_backend() == "cpu"
        self._prefill, self._decode = loop.compiled(loop.BATCH_INVARIANT_CPU if invariant else ())
        self.mesh = mesh if mesh is not None else shd.make_mesh(devices=jax.devices()[:1])
        self.dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size or (len(tokenizer) if tokenizer is not None
                                         else cfg.vocab_size)
        if self.vocab_size > cfg.vocab_size:
            raise ValueError(f"the tokenizer has {self.vocab_size} tokens but the model's "
                             f"vocabulary only {cfg.vocab_size}")
        self.max_len = max_len or cfg.max_position_embeddings
        # Prompt-length buckets; max_len - 1 (the longest prompt that fits) always closes them.
        self.buckets = tuple(sorted({b for b in buckets if b < self.max_len - 1}
                                    | {self.max_len - 1})) if buckets else bucket_lengths(
            self.max_len - 1, min_length=16)
        self.batch_size = batch_size
        if stop_ids is None:
            eos = cfg.eos_token_id if cfg.eos_token_id is not None else getattr(
                tokenizer, "eos_token_id", None)
            stop_ids = () if eos is None else eos
        self.stop_ids = self._check_stop_ids(stop_ids)
        pads = (getattr(tokenizer, "pad_token_id", None), cfg.pad_token_id,
                *self.stop_ids, 0)
        self.pad_id = next(p for p in pads if p is not None)
        if tokenizer is not None:  # (the Encoder's eos_id is not used for prompts)
            eos = tokenizer.eos_token_id
            self.encoder = Encoder(tokenizer, chat=chat, eos_id=self.pad_id if eos is None else eos)
        else:
            self.encoder = None
        self.policy = loop.LM(cfg)
        self.params = self._place(cfg, params)
        for g in guides:
            if _cfg(g.model).vocab_size < self.vocab_size:
                raise ValueError(f"guide vocabulary {_cfg(g.model).vocab_size} is smaller than "
                                 f"the tokenizer's {self.vocab_size}: not the same tokenizer?")
        self.guides = tuple(loop.Guide(loop.LM(_cfg(g.model)), g.combine) for g in guides)
        self.guide_params = tuple(self._place(_cfg(g.model), g.params) for g in guides)
        self.guide_weights = tuple(float(g.weight) for g in guides)

    @classmethod
    def from_pretrained(cls, directory: str, tokenizer=None, *, mesh=None, **kw) -> "Sampler":
        """From a HF checkpoint dir: weights, stop ids of generation_config.json, its tokenizer."""
        from jaxalign.models.hf import load_hf

        cfg, params = load_hf(directory, mesh=mesh)
        if tokenizer is None and os.path.exists(os.path.join(directory, "tokenizer.json")):
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(directory)
        kw.setdefault("stop_ids", stop_ids_from_checkpoint(directory) or None)
        return cls(cfg, params, tokenizer, mesh=mesh, **kw)

    def _check_stop_ids(self, stop_ids) -> tuple[int, ...]:
        ids = (stop_ids,) if isinstance(stop_ids, (int, np.integer)) else tuple(stop_ids)
        for s in ids:
            if not 0 <= int(s) < self.vocab_size:
                raise ValueError(f"stop id {s} is outside the vocabulary [0, {self.vocab_size})")
        return tuple(int(s) for s in ids)

    def _place(self, cfg: ModelConfig, params):
        """Params on the mesh (logical shardings), in the decode layout (`loop.split_layers`)."""
        shardings = shd.tree_shardings(param_logical_axes(cfg), params, self.mesh)
        params = jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)
        return jax.jit(loop.split_layers)(params)

    def set_params(self, params) -> None:
        """New policy weights (e.g. after an RL iteration); compiled programs are reused."""
        self.params = self._place(self.cfg, params)

    def __call__(self, prompts: Sequence[str | list[dict]] | None = None, **kw) -> SampleOutput:
        """Samples n completions per prompt: `sampler(prompts, n=4, temperature=0.7, ...)`.

        Arguments as `stream`; the output holds every prompt, in the order given.
        """
        parts = list(self.stream(prompts, **kw))
        return SampleOutput.merge(parts, sum(len(index) for index, _ in parts))

    def stream(self, prompts: Sequence[str | list[dict]] | None = None, *,
               prompt_ids: Sequence[Sequence[int]] | None = None,
               ids: Sequence[int | str] | None = None, n: int = 1, max_new_tokens: int = 256,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
               seed: int = 0, stop_ids: Sequence[int] | None = None,
               guide_weights: Sequence[float] | None = None, batch_size: int | None = None
               ) -> Iterator[tuple[np.ndarray, SampleOutput]]:
        """Yields (indices of the prompts, their SampleOutput) batch by batch as each finishes.

        prompts: strings or chat messages (tokenized with the tokenizer); or prompt_ids: token
          ids. ids: each prompt's id for the random keys (default: its index in the list); an
          int in [0, 2**32) or its decimal string is used as is, anything else hashed.
        temperature (0: greedy), top_k, top_p, min_p: see selection.Rule. seed: the run's seed.
        stop_ids: default the sampler's. guide_weights: default the guides' own.
        batch_size: most prompts per compiled batch, of batch_size * n rows (default: the
          sampler's, else all).
        Every argument is checked here, before the first batch is traced (ValueError).
        """
        settings = loop.Settings(
            max_new_tokens=max_new_tokens, n=n, pad_id=self.pad_id, vocab_size=self.vocab_size,
            rule=selection.Rule(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p),
            stop_ids=self.stop_ids if stop_ids is None else self._check_stop_ids(stop_ids))
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n (samples per prompt) must be an int >= 1, got {n!r}")
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        weights = self.guide_weights if guide_weights is None else tuple(guide_weights)
        if len(weights) != len(self.guides):
            raise ValueError(f"{len(weights)} guide weights for {len(self.guides)} guides")
        tokens = self._tokenize(prompts, prompt_ids)
        ids = list(range(len(tokens))) if ids is None else list(ids)
        if len(ids) != len(tokens):
            raise ValueError(f"{len(ids)} ids for {len(tokens)} prompts")
        batches = make_batches(
            tokens, [key_id(i) for i in ids], batch_size=batch_size or self.batch_size,
            dp=self.dp, buckets=self.buckets, max_len=self.max_len, max_new=max_new_tokens,
            pad_id=self.pad_id, agree=self._agree)
        return self._results(batches, tokens, settings, seed, np.asarray(weights, np.float32))

    def _tokenize(self, prompts, prompt_ids) -> list[list[int]]:
        if (prompts is None) == (prompt_ids is None):
            raise ValueError("pass exactly one of prompts (text) and prompt_ids (token ids)")
        if prompts is not None:
            if self.encoder is None:
                raise ValueError("text prompts need a tokenizer; pass prompt_ids= instead")
            if isinstance(prompts, str):
                raise ValueError("prompts must be a list of prompts, got one string")
            for i, p in enumerate(prompts):
                if not p:
                    raise ValueError(f"prompt {i} is empty")
            prompt_ids = [self.encoder.encode_prompt(p, f"prompt {i}")
                          for i, p in enumerate(prompts)]
        if len(prompt_ids) == 0:
            raise ValueError("no prompts")
        out = []
        for i, ids in enumerate(prompt_ids):
            ids = [int(t) for t in ids]
            if not ids:
                raise ValueError(f"prompt {i} is empty (0 tokens)")
            if len(ids) >= self.max_len:
                raise ValueError(f"prompt {i} has {len(ids)} tokens: it does not fit the cache "
                                 f"of max_len={self.max_len} with room for a new token")
            if min(ids) < 0 or max(ids) >= self.cfg.vocab_size:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.cfg.vocab_size})")
            out.append(ids)
        return out

    @staticmethod
    def _agree(value: int) -> int:
        """The max of `value` over processes (shapes must match on every host)."""
        if jax.process_count() == 1:
            return value
        return int(np.max(multihost_utils.process_allgather(np.int32(value))))

    def _dispatch(self, batch: Batch, settings: loop.Settings, seed: int, weights):
        put = lambda x: jax.make_array_from_process_local_data(
            shd.batch_sharding(self.mesh, x.ndim), x)
        static = dict(policy=self.policy, guides=self.guides, settings=settings)
        state = self._prefill(self.params, self.guide_params, weights, put(batch.tokens),
                             put(batch.mask), put(batch.ids), put(batch.budget), np.uint32(seed),
                             mesh=self.mesh, **static)
        return self._decode(self.params, self.guide_params, weights, state, **static)

    def _results(self, batches: list[Batch], tokens, settings, seed, weights):
        """Dispatches batch i+1 before reading batch i back (the host never idles the device)."""
        n, pending = settings.n, None
        for batch in batches + [None]:
            state = None if batch is None else self._dispatch(batch, settings, seed, weights)
            if pending is not None:
                prev, prev_state = pending
                yield prev.index, self._output(prev, prev_state, [tokens[i] for i in prev.index], n)
            pending = (batch, state)

    def _output(self, batch: Batch, state: loop.State, tokens, n: int) -> SampleOutput:
        k = len(batch.index)

        def get(x):  # [rows * n, ...] -> [k prompts, n, ...], the padding rows dropped
            rows = _local_rows(x)[:k * n]
            return rows.reshape((k, n) + rows.shape[1:])

        lengths, stopped = get(state.lengths), get(state.stopped)
        out = SampleOutput(tokens=get(state.tokens), lengths=lengths, logprobs=get(state.logprobs),
                           model_logprobs=get(state.model_logprobs),
                           stop_reason=np.where(stopped, "stop", "length"), texts=None,
                           prompt_tokens=tokens)
        if self.tokenizer is not None:  # the text ends before the stop token
            out.texts = [[self.tokenizer.decode(out.tokens[p, j, :lengths[p, j] - stopped[p, j]],
                                                skip_special_tokens=True) for j in range(n)]
                         for p in range(k)]
        return out
