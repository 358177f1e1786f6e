"""The scalar reward model: a decoder from `jaxalign.models` with a one-output score head.

    params = init_reward_params(cfg, jax.random.key(0))   # {"model": backbone, "score": head}
    r_B = reward_scores(cfg, params, tokens_BxT, mask_BxT)  # float32 [B]

The head is Hugging Face's `score` Linear of `*ForSequenceClassification` (D -> 1, no bias),
read at each row's last real token: the last index where `mask` is True, so right- and
left-padded batches give the same scores. The score is the head's output as is: transformers
applies no final-logit soft-cap to it (Gemma-2 caps only the LM head's logits). `cfg` is the
checkpoint's own config (export writes it back unchanged); the backbone never has an LM head,
whatever `cfg.tie_word_embeddings` says (`backbone_config`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxalign.models import (ModelConfig, Transformer, init_params, param_logical_axes,
                             param_shapes, positions_from_mask)

SCORE_AXES = {"kernel": ("embed", None)}  # [D, 1]: the hidden dim shards like the embedding


def backbone_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` without a separate LM head (a tied config builds none; logits are never asked)."""
    return cfg.replace(tie_word_embeddings=True)


def init_reward_params(cfg: ModelConfig, rng: jax.Array, backbone=None):
    """Random head (normal, std `cfg.initializer_range`, as HF) on a random or given backbone.

    `backbone`: params of a causal LM of `cfg` (its `lm_head`, if any, is dropped).
    """
    k_model, k_score = jax.random.split(rng)
    if backbone is None:
        backbone = init_params(backbone_config(cfg), k_model)
    backbone = {k: v for k, v in backbone.items() if k != "lm_head"}
    kernel = cfg.initializer_range * jax.random.normal(
        k_score, (cfg.hidden_size, 1), cfg.jnp_param_dtype)
    return {"model": backbone, "score": {"kernel": kernel}}


def reward_logical_axes(cfg: ModelConfig):
    """Logical axis names matching `init_reward_params` (for `train(logical_axes=...)`)."""
    return {"model": param_logical_axes(backbone_config(cfg)), "score": dict(SCORE_AXES)}


def reward_param_shapes(cfg: ModelConfig):
    sds = jax.ShapeDtypeStruct((cfg.hidden_size, 1), cfg.jnp_param_dtype)
    return {"model": param_shapes(backbone_config(cfg)), "score": {"kernel": sds}}


def last_token_index(mask_BxT: Bool[Array, "B T"]) -> Int[Array, "B"]:
    """Index of each row's last True (0 for an all-False padding row)."""
    T = mask_BxT.shape[-1]
    return jnp.argmax(jnp.where(mask_BxT.astype(bool), jnp.arange(T), -1), axis=-1)


def reward_scores(cfg: ModelConfig, params, tokens_BxT: Int[Array, "B T"],
                  mask_BxT: Bool[Array, "B T"]) -> Float[Array, "B"]:
    """Scalar rewards [B], float32: the score head at each row's last real token."""
    mask_BxT = mask_BxT.astype(bool)
    _, _, hidden_BxTxD = Transformer(backbone_config(cfg)).apply(
        {"params": params["model"]}, tokens_BxT, positions_from_mask(mask_BxT), mask_BxT,
        return_logits=False)
    last_B = last_token_index(mask_BxT)
    h_BxD = jnp.take_along_axis(hidden_BxTxD, last_B[:, None, None], axis=1)[:, 0]
    kernel_Dx1 = params["score"]["kernel"]
    # HF: score(hidden)[arange(B), last_non_pad_token]; the head is linear, so gather first.
    r_B = jnp.einsum("bd,do->bo", h_BxD.astype(jnp.float32), kernel_Dx1.astype(jnp.float32),
                     preferred_element_type=jnp.float32)[:, 0]
    return r_B
