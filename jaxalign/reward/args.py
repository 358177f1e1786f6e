"""ARGS decoding (Khanov et al. 2024) with the scalar reward model of model.py.

    searcher = ArgsSampler(cfg, params, rm_cfg, rm_params, tokenizer, mesh=make_mesh())
    out = searcher(prompts, k=10, w=1.0, temperature=0.0, max_new_tokens=128)  # ARGS-greedy
    out = searcher(prompts, n=4, k=10, w=1.5, temperature=0.7)                  # ARGS-stochastic

ARGS is a decode strategy of the one sampler (jaxalign/sampling/strategies.py: `TopKReward`);
this file adapts the reward model to it (`ScalarRewardStep`, a `strategies.RewardStep`), and
`ArgsSampler` is `Sampler(..., reward=RewardGuide(ScalarRewardStep(rm_cfg), rm_params))`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxalign import sharding as shd
from jaxalign.models import ModelConfig, Transformer, init_cache
from jaxalign.reward.model import SCORE_AXES, backbone_config
from jaxalign.sampling import loop
from jaxalign.sampling.sampler import RewardGuide, Sampler, place_params


@dataclasses.dataclass(frozen=True)
class ScalarRewardStep:
    """The scalar reward model as ARGS's loop sees it (`strategies.RewardStep`): r at every
    token.

    params: {"model": backbone in the decode layout (`loop.decode_layout`), "score": {"kernel"}}.
    """

    cfg: ModelConfig  # the reward model's own config (model.py)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def max_positions(self) -> int:
        return self.cfg.max_position_embeddings

    def place(self, params, mesh):
        """{"model": the backbone placed (`place_params`: NaN refused), "score": the head}."""
        kernel = params["score"]["kernel"]
        if kernel.shape != (self.cfg.hidden_size, 1):
            raise ValueError(f"rm_params['score']['kernel'] has shape {kernel.shape}, expected "
                             f"({self.cfg.hidden_size}, 1) (a scalar reward model of rm_cfg)")
        score = shd.place(dict(params["score"]), SCORE_AXES, mesh)
        return {"model": place_params(backbone_config(self.cfg), params["model"], mesh,
                                      "the reward model"), "score": score}

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


def ArgsSampler(model, params, rm_cfg: ModelConfig, rm_params, tokenizer=None,
                **sampler_kw) -> Sampler:
    """A `Sampler` that decodes by ARGS with a scalar reward model.

    rm_cfg, rm_params: the reward model (model.py: {"model": backbone, "score": {"kernel"}}),
      on the policy's tokenizer. Other keyword arguments are the Sampler's (mesh, max_len,
      buckets, batch_size, stop_ids, vocab_size, chat, batch_invariant); ARGS takes no guides.
      Call it with `k` (candidates per step) and `w` (the reward's weight): `Sampler.stream`.
    """
    if "guides" in sampler_kw:
        raise ValueError("ArgsSampler takes no guides: the reward model is its guide")
    return Sampler(model, params, tokenizer,
                   reward=RewardGuide(ScalarRewardStep(rm_cfg), rm_params), **sampler_kw)
