"""`Sampler`: prompts in, completions with log-probs out, data-parallel over a mesh.

    sampler = Sampler(cfg, params, tokenizer, mesh=make_mesh())    # or Sampler.from_pretrained(dir)
    out = sampler(["Tell me a joke."], n=4, temperature=0.7, top_p=0.9, max_new_tokens=256)
    out.texts[0][3], out.tokens[0, 3, :out.lengths[0, 3]], out.model_logprobs[0, 3]

GenARM guided decoding (strategies.Guided): autoregressive reward models steer the policy per token,
    sampler = Sampler(cfg, params, tokenizer, guides=[GuideModel(arm_cfg, arm_params, weight=2.0)])
    out = sampler(prompts, guide_weights=[1.0])   # alphas at call time: no recompilation
    out.guide_rewards()[p, j, 0]                  # r(x, y) = sum_t log pi_r(y_t | x, y_<t)

ARGS (strategies.TopKReward): a reward model scores the policy's top-k tokens at every step,
    sampler = Sampler(cfg, params, tokenizer, reward=RewardGuide(ScalarRewardStep(rm_cfg), rm))
    out = sampler(prompts, k=10, w=1.5, temperature=0.0)   # w: a runtime weight, like the alphas

One Sampler runs every decode strategy (strategies.py); what differs between them is the models
placed here and the runtime controls (`guide_weights`: the alphas, or ARGS's [w]).

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
import functools
import json
import os
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxalign import distributed
from jaxalign import sharding as shd
from jaxalign.data.batching import bucket_lengths
from jaxalign.data.tokenize import Encoder
from jaxalign.models import ModelConfig, Transformer, param_logical_axes
from jaxalign.sampling import loop, selection, strategies
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
    """A guide for `Sampler(guides=...)`: a causal LM (GenARM's ARM, any family and size) that
    shares the policy's tokenizer, and its alpha (the default of `guide_weights`).

    tokenizer: optional; when the Sampler has one too, the two must agree on every id they
    share (checked at construction: weak-to-strong guidance needs the same token ids).
    """

    model: Transformer | ModelConfig
    params: Any
    weight: float = 1.0
    tokenizer: Any = None


@dataclasses.dataclass(frozen=True)
class RewardGuide:
    """ARGS's reward model for `Sampler(reward=...)`: a `strategies.RewardStep` (e.g.
    jaxalign.reward.ScalarRewardStep), its params, and its weight w (the default of `w`). It
    reads the policy's token ids, so it must share the policy's tokenizer (its vocabulary is
    checked against it: GenARM's official evaluation crashed on a 32000 vs 32001 mismatch)."""

    step: strategies.RewardStep
    params: Any
    weight: float = 1.0


@functools.lru_cache(maxsize=16)
def _decode_layout(cfg: ModelConfig):
    """The jitted `loop.decode_layout` of a config, made once: `set_params` then neither
    retraces nor recompiles."""
    return jax.jit(functools.partial(loop.decode_layout, cfg))


@jax.jit
def _has_nan(leaves: list) -> jax.Array:
    """[n_leaves] bool: the leaf holds a NaN."""
    return jnp.stack([jnp.isnan(x).any() for x in leaves])


def check_no_nan(params, name: str) -> None:
    """ValueError naming the float leaves of `params` that hold NaN (one pass over the weights
    where they live, one bool per leaf back to the host). -inf is allowed: a constant -inf
    logit masks a token."""
    leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(params)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return
    nan = np.asarray(_has_nan([x for _, x in leaves]))
    if nan.any():
        bad = [jax.tree_util.keystr(p) for (p, _), b in zip(leaves, nan) if b]
        raise ValueError(f"{name}: weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                         f"hold NaN: every completion would be NaN")


def place_params(cfg: ModelConfig, params, mesh, name: str = "params"):
    """Params on the mesh (logical shardings), in the decode layout (`loop.decode_layout`);
    NaN in them is refused (ValueError naming `name` and the leaves)."""
    params = shd.place(params, param_logical_axes(cfg), mesh)
    check_no_nan(params, name)
    return _decode_layout(cfg)(params)


def _cfg(model) -> ModelConfig:
    return model.cfg if isinstance(model, Transformer) else model


def completion_text(tokenizer, prompt_ids, completion_ids, context: int = 4) -> str:
    """The completion's text as it continues the prompt's: decode(last prompt tokens +
    completion) past decode(last prompt tokens). SentencePiece and word-level decoders drop the
    space before a sequence's first word, so decoding the completion alone would glue it to the
    prompt ("the cat" + "sat"); this keeps it (" sat"), and prompt + text re-tokenises as
    prompt + completion (what a reward model or a DPO dataset reads). Special tokens are
    skipped; if the context's text is not a prefix (a character split across the boundary),
    the completion is decoded alone."""
    head = [int(t) for t in prompt_ids[len(prompt_ids) - context:]] if context else []
    ids = [int(t) for t in completion_ids]
    if head:
        before = tokenizer.decode(head, skip_special_tokens=True)
        full = tokenizer.decode(head + ids, skip_special_tokens=True)
        if full.startswith(before):
            return full[len(before):]
    return tokenizer.decode(ids, skip_special_tokens=True)


def _check_same_tokens(tokenizer, other, i: int) -> None:
    """Guide i's tokenizer maps every id both have to the same token as the policy's."""
    ids = list(range(min(len(tokenizer), len(other))))
    for t, a, b in zip(ids, tokenizer.convert_ids_to_tokens(ids),
                       other.convert_ids_to_tokens(ids)):
        if a != b:
            raise ValueError(f"guide {i}'s tokenizer maps id {t} to {b!r}, the policy's to "
                             f"{a!r}: guides must share the policy's tokenizer")


class Sampler:
    """Samples completions from a jaxalign Transformer: plain, guided by ARMs (GenARM), or by a
    reward model scoring top-k candidates (ARGS)."""

    def __init__(self, model: Transformer | ModelConfig, params, tokenizer=None, *, mesh=None,
                 max_len: int | None = None, buckets: Sequence[int] | None = None,
                 batch_size: int | None = None, stop_ids: Sequence[int] | int | None = None,
                 guides: Sequence[GuideModel] = (), reward: RewardGuide | None = None,
                 guide_convention: str = "paper",
                 crop_vocab: bool = False, vocab_size: int | None = None,
                 chat: bool | None = None, batch_invariant: bool = False):
        """guides: GenARM's autoregressive reward models, each run with its own KV cache in the
          same compiled step; per token the policy's logits become
          z_base + sum_i alpha_i log_softmax(z_arm_i), then temperature and filters (alphas:
          `guide_weights` at call time, default the guides' `weight`).
        guide_convention: "paper" (default: that sum, i.e. (pi_base * prod pi_r^alpha)^(1/T)) or
          "official" (the official GenARM scripts: the sum divided by 1 + sum_i alpha_i before
          temperature; they also pass T / (1 + alpha), giving the paper's distribution, while
          with T unchanged it is a flatter, geometric-mean one). See strategies.py.
        reward: ARGS's reward model (`RewardGuide`; not with guides): per step it scores the
          policy's `k` most likely tokens, score = z + w * r (`k`, `w` at call time).
        crop_vocab: guides must have the policy's `vocab_size` (else ValueError); with True they
          may differ (same tokenizer, e.g. 32000 vs 32001 rows): every model's logits are cut to
          the shared prefix of min(vocab sizes, len(tokenizer)) ids, ids past it are never
          chosen, and guide log-probs are normalised over it (`model_logprobs` stay the
          policy's own, over its whole vocabulary).
        batch_invariant: compile so that a row's floats do not depend on its batch at all
          (`loop.BATCH_INVARIANT_CPU`; on CPU only). Without it, tokens are the same whatever
          the batch but log-probs may differ in their last bits (see loop.py).
        """
        cfg = self.cfg = _cfg(model)
        guide_cfgs = [_cfg(g.model) for g in guides]
        self.policy = loop.LM(cfg)
        self.guides = tuple(loop.LM(g) for g in guide_cfgs)
        self.strategy = strategies.Guided(self.policy, self.guides, guide_convention,
                                          bool(crop_vocab))  # checks the convention
        if reward is not None and guides:
            raise ValueError("pass guides (GenARM) or reward (ARGS), not both")
        self.reward = reward
        for i, g in enumerate(guide_cfgs):
            if g.vocab_size != cfg.vocab_size and not crop_vocab:
                raise ValueError(
                    f"guide {i} has vocab_size {g.vocab_size} but the policy {cfg.vocab_size}: "
                    f"if they share the tokenizer, pass crop_vocab=True to sample from the ids "
                    f"every model has")
        for i, g in enumerate(guides):
            if g.tokenizer is not None and tokenizer is not None:
                _check_same_tokens(tokenizer, g.tokenizer, i)
        self.guide_convention, self.crop_vocab = guide_convention, bool(crop_vocab)
        invariant = batch_invariant and jax.default_backend() == "cpu"
        self._prefill, self._decode = loop.compiled(loop.BATCH_INVARIANT_CPU if invariant else ())
        self.mesh = mesh if mesh is not None else shd.make_mesh(devices=jax.devices()[:1])
        self.dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size or (len(tokenizer) if tokenizer is not None
                                         else cfg.vocab_size)
        # (name, vocabulary rows, position table) of every model the strategy runs
        models = [("the policy", cfg.vocab_size, cfg.max_position_embeddings)] + [
            (f"guide {i}", g.vocab_size, g.max_position_embeddings)
            for i, g in enumerate(guide_cfgs)]
        if reward is not None:
            models.append(("the reward model", reward.step.vocab_size, reward.step.max_positions))
        # Every model can embed ids below this (prompts, padding); ids >= vocab_size never come.
        self._embed_owner, self.embed_size, _ = min(models, key=lambda m: m[1])
        if crop_vocab:
            self.vocab_size = min(self.vocab_size, self.embed_size)
        elif self.vocab_size > cfg.vocab_size:
            raise ValueError(f"the tokenizer has {self.vocab_size} tokens but the model's "
                             f"vocabulary only {cfg.vocab_size} (crop_vocab=True samples from "
                             f"the ids both have)")
        if reward is not None and reward.step.vocab_size < self.vocab_size:
            raise ValueError(f"reward model vocabulary {reward.step.vocab_size} is smaller than "
                             f"the policy's tokenizer's {self.vocab_size}: not the same tokenizer?")
        self.max_len = max_len or cfg.max_position_embeddings
        if isinstance(self.max_len, bool) or not (isinstance(self.max_len, (int, np.integer))
                                                   and self.max_len >= 2):
            raise ValueError(f"max_len must be an int >= 2 (a prompt token and a new one), "
                             f"got {max_len!r}")
        self.max_len = int(self.max_len)
        for name, _, positions in models:
            if self.max_len > positions:  # positions 0 .. max_len - 1 are used
                raise ValueError(
                    f"max_len={self.max_len} is longer than {name}'s position table "
                    f"(ModelConfig.max_position_embeddings={positions}): its logits past that "
                    f"position are not defined; pass max_len <= {positions}")
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
        self.pad_id = next(p for p in pads if p is not None and p < self.embed_size)
        if tokenizer is not None:  # (the Encoder's eos_id is not used for prompts)
            eos = tokenizer.eos_token_id
            self.encoder = Encoder(tokenizer, chat=chat, eos_id=self.pad_id if eos is None else eos)
        else:
            self.encoder = None
        self.guide_weights = (self._check_weights([reward.weight], "RewardGuide.weight")
                              if reward is not None else
                              self._check_weights([g.weight for g in guides], "GuideModel.weight"))
        self.params = self._place(cfg, params, "the policy")
        self.guide_params = tuple(self._place(c, g.params, f"guide {i}")
                                  for i, (c, g) in enumerate(zip(guide_cfgs, guides)))
        self.reward_params = None if reward is None else reward.step.place(reward.params,
                                                                            self.mesh)

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

    def _check_weights(self, weights, name: str) -> np.ndarray:
        """The runtime controls as float32 [G]: one finite alpha per guide (and 1 + sum > 0 for
        the official convention, which divides by it), or ARGS's [w]."""
        G = 1 if self.reward is not None else len(self.guides)
        try:
            w = np.asarray(weights, np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected {G} numbers (one alpha per guide), "
                             f"got {weights!r}") from None
        if w.shape != (G,):
            raise ValueError(f"{name}: expected {G} values (one alpha per guide), got "
                             f"{w.size if w.ndim == 1 else weights!r}")
        if not np.isfinite(w).all():
            raise ValueError(f"{name} must be finite, got {w.tolist()}")
        if self.guide_convention == "official" and self.guides and not 1 + w.sum() > 0:
            raise ValueError(f"{name}: the official convention divides by 1 + sum(alphas), "
                             f"which must be > 0; got alphas {w.tolist()}")
        return w

    def _place(self, cfg: ModelConfig, params, name: str = "params"):
        return place_params(cfg, params, self.mesh, name)

    def set_params(self, params) -> None:
        """New policy weights (e.g. after an RL iteration); compiled programs are reused."""
        self.params = self._place(self.cfg, params, "the policy")

    def weights(self) -> dict:
        """Every model's params this sampler's output depends on (e.g. to fingerprint them)."""
        if self.reward is not None:
            return {"policy": self.params, "guides": (), "reward": self.reward_params}
        return {"policy": self.params, "guides": self.guide_params}

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
               guide_weights: Sequence[float] | None = None, batch_size: int | None = None,
               k: int | None = None, w: float | None = None
               ) -> Iterator[tuple[np.ndarray, SampleOutput]]:
        """Yields (indices of the prompts, their SampleOutput) batch by batch as each finishes.

        prompts: strings or chat messages (tokenized with the tokenizer); or prompt_ids: token
          ids. ids: each prompt's id for the random keys (default: its index in the list); an
          int in [0, 2**32) or its decimal string is used as is, anything else hashed.
        max_new_tokens: at most this many new tokens per completion; a prompt of L tokens gets
          at most max_len - L (the output's N is min(max_new_tokens, max_len - 1)).
        temperature (0: greedy), top_k, top_p, min_p: see selection.Rule. seed: the run's seed,
          an int in [0, 2**32). Prompts whose ids give the same key id (`prompts.key_id`) are
          refused: they would share their random streams.
        stop_ids: default the sampler's. guide_weights: the runtime controls (changing them
          does not recompile): the alphas, one per guide, default the guides' own `weight`;
          with a reward model (ARGS), [w].
        k, w (ARGS only): the candidates (the policy's k most likely tokens, default 10) the
          reward model scores per step, and the reward's weight in score = z + w * r (0: the
          policy's greedy / top-k decoding; default the RewardGuide's `weight`). temperature 0
          is ARGS-greedy, else ARGS-stochastic: softmax(score / temperature).
        batch_size: most prompts per compiled batch, of batch_size * n rows (default: the
          sampler's, else all).
        Every argument is checked here, before the first batch is traced (ValueError). A
        completion whose logits or log-probs are not finite (NaN or inf weights, say) is never
        returned: the batch raises ValueError naming its prompt and the step (`loop.record`).
        """
        settings = loop.Settings(
            max_new_tokens=max_new_tokens, n=n, pad_id=self.pad_id, vocab_size=self.vocab_size,
            rule=selection.Rule(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p),
            stop_ids=self.stop_ids if stop_ids is None else self._check_stop_ids(stop_ids))
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n (samples per prompt) must be an int >= 1, got {n!r}")
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        strategy, controls = self._strategy(guide_weights, k, w)
        tokens = self._tokenize(prompts, prompt_ids)
        ids = list(range(len(tokens))) if ids is None else list(ids)
        if len(ids) != len(tokens):
            raise ValueError(f"{len(ids)} ids for {len(tokens)} prompts")
        batches = make_batches(
            tokens, [key_id(i) for i in ids], batch_size=batch_size or self.batch_size,
            dp=self.dp, buckets=self.buckets, max_len=self.max_len, max_new=max_new_tokens,
            pad_id=self.pad_id, agree=self._agree)
        if isinstance(seed, bool) or not (isinstance(seed, (int, np.integer))
                                          and 0 <= seed < 2**32):
            raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
        # The decode buffers hold min(max_new_tokens, max_len - 1) tokens: no row can produce
        # more (its budget is max_len - its prompt's length), so none is allocated.
        settings = dataclasses.replace(
            settings, max_new_tokens=min(settings.max_new_tokens, self.max_len - 1))
        return self._run(batches, tokens, settings, seed, strategy, controls)

    def _strategy(self, guide_weights, k, w):
        """The call's decode strategy (static) and its runtime controls (float32 [G])."""
        if self.reward is None:
            if k is not None or w is not None:
                raise ValueError("k and w are ARGS's (candidates per step, the reward's weight): "
                                 "this sampler has no reward model (Sampler(reward=...))")
            strategy = self.strategy
        else:
            k = 10 if k is None else k
            if isinstance(k, bool) or not (isinstance(k, int) and 1 <= k <= self.vocab_size):
                raise ValueError(f"k (candidates per step) must be an int in "
                                 f"[1, {self.vocab_size}] (the vocabulary), got {k!r}")
            if w is not None:
                if guide_weights is not None:
                    raise ValueError("pass w (ARGS's reward weight) or guide_weights, not both")
                if isinstance(w, bool) or not (isinstance(w, (int, float, np.floating,
                                                              np.integer)) and np.isfinite(w)):
                    raise ValueError(f"w (the reward's weight) must be a finite number, "
                                     f"got {w!r}")
                guide_weights = [w]
            strategy = strategies.TopKReward(self.policy, self.reward.step, k)
        if guide_weights is None:
            return strategy, self.guide_weights
        return strategy, self._check_weights(guide_weights, "guide_weights")

    def _loop_params(self) -> tuple:
        """Every model's params as the strategy takes them: the policy's first."""
        if self.reward is not None:
            return (self.params, self.reward_params)
        return (self.params,) + self.guide_params

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
            if min(ids) < 0 or max(ids) >= self.embed_size:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.embed_size}) "
                                 f"({self._embed_owner}'s vocabulary)")
            out.append(ids)
        return out

    @staticmethod
    def _agree(value: int) -> int:
        """The max of `value` over processes (shapes must match on every host)."""
        if jax.process_count() == 1:
            return value
        return int(np.max(multihost_utils.process_allgather(np.int32(value))))

    def _dispatch(self, batch: Batch, settings: loop.Settings, seed: int, strategy, controls):
        put = lambda x: jax.make_array_from_process_local_data(
            shd.batch_sharding(self.mesh, x.ndim), x)
        params, static = self._loop_params(), dict(strategy=strategy, settings=settings)
        state = self._prefill(params, controls, put(batch.tokens), put(batch.mask),
                              put(batch.ids), put(batch.budget), np.uint32(seed), mesh=self.mesh,
                              **static)
        return self._decode(params, controls, state, **static)

    def _run(self, batches: list[Batch], tokens, settings, seed, strategy, controls):
        """Dispatches batch i+1 before reading batch i back (the host never idles the device).
        A dispatched batch's KV caches are dropped at once (only its results are read back),
        so they are freed when its decode ends: one batch's caches are resident at a time."""
        pending = None
        for batch in batches + [None]:
            state = None if batch is None else self._dispatch(
                batch, settings, seed, strategy, controls).replace(caches=())
            if pending is not None:
                prev, prev_state = pending
                yield prev.index, self._output(prev, prev_state, [tokens[i] for i in prev.index],
                                               settings)
            pending = (batch, state)

    def _output(self, batch: Batch, state: loop.State, tokens, settings) -> SampleOutput:
        k, n = len(batch.index), settings.n

        def get(x):  # [rows * n, ...] -> [k prompts, n, ...], the padding rows dropped
            rows = distributed.local_rows(x)[:k * n]
            return rows.reshape((k, n) + rows.shape[1:])

        failed_at = get(state.failed_at)
        if (failed_at >= 0).any():
            raise ValueError(self._failure(batch, tokens, failed_at, settings))
        lengths, stopped = get(state.lengths), get(state.stopped)
        out = SampleOutput(tokens=get(state.tokens), lengths=lengths, logprobs=get(state.logprobs),
                           model_logprobs=get(state.model_logprobs),
                           guide_logprobs=get(state.guide_logprobs),
                           stop_reason=np.where(stopped, "stop", "length"), texts=None,
                           prompt_tokens=tokens)
        if self.tokenizer is not None:  # the text ends before the stop token
            out.texts = [[completion_text(self.tokenizer, tokens[p],
                                          out.tokens[p, j, :lengths[p, j] - stopped[p, j]])
                          for j in range(n)] for p in range(k)]
        return out

    def _failure(self, batch: Batch, tokens, failed_at: np.ndarray, settings) -> str:
        """The error for rows whose logits or log-probs were not finite (`loop.record`)."""
        p, j = np.argwhere(failed_at >= 0)[0]
        text = (self.tokenizer.decode(tokens[p], skip_special_tokens=True)
                if self.tokenizer is not None else f"token ids {tokens[p]}")
        text = text if len(text) <= 40 else text[:37] + "..."
        t = int(failed_at[p, j])
        return (f"prompt {batch.index[p]} ({text!r}), sample {j}: the logits or log-probs at "
                f"step {t} (new token {t + 1}) are not finite (NaN or inf), so no completion is "
                f"returned ({int((failed_at >= 0).sum())} of {failed_at.size} completions of "
                f"its batch failed). Look for an extreme temperature "
                f"({settings.rule.temperature}) or guide weight, or weights or activations "
                f"that overflow the model's dtype")
