"""ARGS decoding (Khanov et al. 2024) with the scalar reward model of model.py.

    searcher = ArgsSampler(cfg, params, rm_cfg, rm_params, tokenizer, mesh=make_mesh())
    out = searcher(prompts, k=10, w=1.0, temperature=0.0, max_new_tokens=128)  # ARGS-greedy
    out = searcher(prompts, n=4, k=10, w=1.5, temperature=0.7)                  # ARGS-stochastic

The compiled loop is jaxalign/sampling/args.py; this file adapts the reward model to it
(`ScalarRewardStep`) and gives it the Sampler's host side (tokenisation, validation, bucketed
batches, mesh, multi-host, outputs). The reward model reads the policy's token ids, so it must
share the policy's tokenizer: its vocabulary is checked against it up front (GenARM's official
evaluation crashed on a 32000 vs 32001 mismatch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import sharding as shd
from jaxalign.models import ModelConfig, Transformer, init_cache
from jaxalign.reward.model import SCORE_AXES, backbone_config
from jaxalign.sampling import args, loop, selection
from jaxalign.sampling.prompts import key_id, make_batches
from jaxalign.sampling.sampler import Sampler


@dataclasses.dataclass(frozen=True)
class ScalarRewardStep:
    """The scalar reward model as ARGS's loop sees it (`args.RewardStep`): r at every token.

    params: {"model": backbone in the decode layout (`loop.decode_layout`), "score": {"kernel"}}.
    """

    cfg: ModelConfig  # the reward model's own config (model.py)

    def init_cache(self, batch: int, length: int):
        cfg = backbone_config(self.cfg)
        return init_cache(cfg, batch, length, per_layer=not cfg.scan_layers)

    def __call__(self, params, tokens_BxT, positions_BxT, mask_BxT, cache, *,
                 candidates: bool = False):
        """(r [B, T] float32: the score head at each token, i.e. the reward of the sequence
        ending there as `reward_scores` gives it; the cache)."""
        cfg = backbone_config(self.cfg)
        _, cache, hidden_BxTxD = Transformer(cfg).apply(
            {"params": loop.decode_layout(cfg, params["model"])}, tokens_BxT, positions_BxT,
            mask_BxT, cache, return_logits=False, candidates=candidates)
        r_BxTx1 = jnp.einsum("btd,do->bto", hidden_BxTxD.astype(jnp.float32),
                             params["score"]["kernel"].astype(jnp.float32),
                             preferred_element_type=jnp.float32)
        return r_BxTx1[..., 0], cache


class ArgsSampler(Sampler):
    """ARGS decoding of a jaxalign Transformer guided by a scalar reward model.

    rm_cfg, rm_params: the reward model (model.py: {"model": backbone, "score": {"kernel"}}),
      on the policy's tokenizer. Other keyword arguments are the Sampler's (buckets,
      batch_size, stop_ids, vocab_size, chat, batch_invariant); ARGS takes no guides.
    """

    def __init__(self, model, params, rm_cfg: ModelConfig, rm_params, tokenizer=None, *,
                 mesh=None, max_len: int | None = None, batch_invariant: bool = False,
                 **sampler_kw):
        if "guides" in sampler_kw:
            raise ValueError("ArgsSampler takes no guides: the reward model is its guide")
        super().__init__(model, params, tokenizer, mesh=mesh, max_len=max_len,
                         batch_invariant=batch_invariant, **sampler_kw)
        if rm_cfg.vocab_size < self.vocab_size:
            raise ValueError(f"reward model vocabulary {rm_cfg.vocab_size} is smaller than the "
                             f"policy's tokenizer's {self.vocab_size}: not the same tokenizer?")
        if rm_cfg.max_position_embeddings < self.max_len:
            raise ValueError(f"the reward model supports {rm_cfg.max_position_embeddings} "
                             f"positions, fewer than max_len={self.max_len}")
        kernel = rm_params["score"]["kernel"]
        if kernel.shape != (rm_cfg.hidden_size, 1):
            raise ValueError(f"rm_params['score']['kernel'] has shape {kernel.shape}, expected "
                             f"({rm_cfg.hidden_size}, 1) (a scalar reward model of rm_cfg)")
        self.rm_cfg = rm_cfg
        self.reward = ScalarRewardStep(rm_cfg)
        score = jax.device_put(dict(rm_params["score"]),
                               shd.tree_shardings(SCORE_AXES, rm_params["score"], self.mesh))
        self.reward_params = {"model": self._place(backbone_config(rm_cfg), rm_params["model"],
                                                   "the reward model"),
                              "score": score}
        invariant = batch_invariant and jax.default_backend() == "cpu"
        self._prefill, self._decode = args.compiled(
            loop.BATCH_INVARIANT_CPU if invariant else ())

    def weights(self) -> dict:
        """The policy's params and the reward model's (its output depends on both)."""
        return {**super().weights(), "reward": self.reward_params}

    def stream(self, prompts=None, *, prompt_ids: Sequence[Sequence[int]] | None = None,
               ids: Sequence[int | str] | None = None, n: int = 1, k: int = 10,
               w: float = 1.0, max_new_tokens: int = 256, temperature: float = 1.0,
               seed: int = 0, stop_ids: Sequence[int] | None = None,
               batch_size: int | None = None):
        """Yields (indices of the prompts, their SampleOutput) batch by batch; `__call__` merges.

        k: candidates (the policy's k most likely tokens) the reward model scores per step.
        w: the reward's weight in score = z + w * r (0: greedy/sampled top-k of the policy).
        temperature: 0 for ARGS-greedy, else ARGS-stochastic: softmax(score / temperature).
        Other arguments as `Sampler.stream`; all checked here, before anything is traced.
        """
        if not (isinstance(k, int) and 1 <= k <= self.vocab_size):
            raise ValueError(f"k (candidates per step) must be an int in [1, {self.vocab_size}] "
                             f"(the vocabulary), got {k!r}")
        if isinstance(w, bool) or not (isinstance(w, (int, float, np.floating, np.integer))
                                       and math.isfinite(w)):
            raise ValueError(f"w (the reward's weight) must be a finite number, got {w!r}")
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n (samples per prompt) must be an int >= 1, got {n!r}")
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        settings = args.Settings(
            max_new_tokens=max_new_tokens, n=n, pad_id=self.pad_id, vocab_size=self.vocab_size,
            rule=selection.Rule(temperature=temperature), k=k,
            stop_ids=self.stop_ids if stop_ids is None else self._check_stop_ids(stop_ids))
        tokens = self._tokenize(prompts, prompt_ids)
        for i, t in enumerate(tokens):
            if max(t) >= self.rm_cfg.vocab_size:
                raise ValueError(f"prompt {i} has token ids outside the reward model's "
                                 f"vocabulary [0, {self.rm_cfg.vocab_size})")
        ids = list(range(len(tokens))) if ids is None else list(ids)
        if len(ids) != len(tokens):
            raise ValueError(f"{len(ids)} ids for {len(tokens)} prompts")
        batches = make_batches(
            tokens, [key_id(i) for i in ids], batch_size=batch_size or self.batch_size,
            dp=self.dp, buckets=self.buckets, max_len=self.max_len, max_new=max_new_tokens,
            pad_id=self.pad_id, agree=self._agree)
        return self._results(batches, tokens, settings, seed, np.float32(w))

    def _dispatch(self, batch, settings: args.Settings, seed: int, w):
        put = lambda x: jax.make_array_from_process_local_data(
            shd.batch_sharding(self.mesh, x.ndim), x)
        static = dict(policy=self.policy, reward=self.reward, settings=settings)
        state = self._prefill(self.params, self.reward_params, w, put(batch.tokens),
                              put(batch.mask), put(batch.ids), put(batch.budget),
                              np.uint32(seed), mesh=self.mesh, **static)
        return self._decode(self.params, self.reward_params, w, state, **static)
