"""Hugging Face config.json <-> ModelConfig.

Reads both styles: transformers 5 (`rope_parameters`, `dtype`) and the one most hub checkpoints
carry (`rope_scaling`, `rope_theta`, `torch_dtype`). Anything that would change the math and is
not implemented is refused with the offending field named; unrelated keys are ignored.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxalign.models.config import ModelConfig, RopeScaling

SUPPORTED = ("llama", "mistral", "qwen2", "gpt2")
_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
         "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}


class ConfigError(ValueError):
    pass


def read_hf_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no config.json in the checkpoint directory")
    with open(path) as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e


def _rope(d: dict, where: str) -> tuple[float, RopeScaling]:
    params = d.get("rope_parameters")
    if params is None:  # hub style
        params = dict(d.get("rope_scaling") or {})
        params.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    params = dict(params)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise ConfigError(f"{where}: rope_type {kind!r} is not supported "
                          "(supported: default, linear, llama3)")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{where}: partial_rotary_factor != 1 is not supported")
    scaling = RopeScaling(rope_type=kind)
    if kind == "linear":
        scaling = RopeScaling("linear", factor=float(params["factor"]))
    elif kind == "llama3":
        scaling = RopeScaling(
            "llama3", factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]))
    return float(params.get("rope_theta", 10000.0)), scaling


def _require(d: dict, key: str, where: str):
    if key not in d:
        raise ConfigError(f"{where}: missing field {key!r}")
    return d[key]


def config_from_hf(d: dict[str, Any], where: str = "config.json", **overrides) -> ModelConfig:
    """ModelConfig from a parsed config.json; `overrides` set execution fields (dtype, remat...)."""
    mt = d.get("model_type")
    if mt not in SUPPORTED:
        raise ConfigError(f"{where}: model_type {mt!r} is not supported (supported: {SUPPORTED})")
    common = dict(bos_token_id=d.get("bos_token_id"), pad_token_id=d.get("pad_token_id"),
                  eos_token_id=_eos(d.get("eos_token_id")),
                  initializer_range=d.get("initializer_range", 0.02))
    if mt == "gpt2":
        for key, ok in (("scale_attn_by_inverse_layer_idx", False),
                        ("reorder_and_upcast_attn", False), ("scale_attn_weights", True),
                        ("add_cross_attention", False)):
            if d.get(key, ok) != ok:
                raise ConfigError(f"{where}: {key}={d[key]!r} is not supported")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"{where}: activation_function {act!r} is not supported")
        n_embd = _require(d, "n_embd", where)
        return ModelConfig(
            family="gpt2", vocab_size=_require(d, "vocab_size", where), hidden_size=n_embd,
            num_layers=_require(d, "n_layer", where), num_heads=d["n_head"],
            num_kv_heads=d["n_head"], intermediate_size=d.get("n_inner") or 4 * n_embd,
            max_position_embeddings=d.get("n_positions", 1024),
            norm_eps=d.get("layer_norm_epsilon", 1e-5), qkv_bias=True, o_bias=True,
            mlp_bias=True, tie_word_embeddings=d.get("tie_word_embeddings", True),
            **common, **overrides)
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act {act!r} is not supported (expected 'silu')")
    if mt == "qwen2" and d.get("use_sliding_window", False):
        raise ConfigError(f"{where}: use_sliding_window=true is not supported for qwen2")
    theta, scaling = _rope(d, where)
    heads = _require(d, "num_attention_heads", where)
    attn_bias = bool(d.get("attention_bias", False))
    return ModelConfig(
        family=mt, vocab_size=_require(d, "vocab_size", where),
        hidden_size=_require(d, "hidden_size", where),
        num_layers=_require(d, "num_hidden_layers", where), num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        intermediate_size=_require(d, "intermediate_size", where), head_dim=d.get("head_dim"),
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
        sliding_window=d.get("sliding_window") if mt == "mistral" else None,
        qkv_bias=True if mt == "qwen2" else attn_bias,
        o_bias=False if mt == "qwen2" else attn_bias,
        mlp_bias=bool(d.get("mlp_bias", False)) if mt == "llama" else False,
        tie_word_embeddings=d.get("tie_word_embeddings", False), **common, **overrides)


def _eos(e):
    return tuple(e) if isinstance(e, list) else e


def config_to_hf(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    """config.json in the transformers 5 style (`rope_parameters`, `dtype`)."""
    eos = list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
    out: dict[str, Any] = dict(
        model_type=cfg.family, architectures=[_ARCH[cfg.family]], vocab_size=cfg.vocab_size,
        tie_word_embeddings=cfg.tie_word_embeddings, bos_token_id=cfg.bos_token_id,
        eos_token_id=eos, pad_token_id=cfg.pad_token_id,
        initializer_range=cfg.initializer_range, dtype=dtype)
    if cfg.is_gpt2:
        out.update(n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                   n_inner=cfg.intermediate_size, n_positions=cfg.max_position_embeddings,
                   layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new")
        return out
    s = cfg.rope_scaling
    rope: dict[str, Any] = {"rope_type": s.rope_type, "rope_theta": cfg.rope_theta}
    if s.rope_type == "linear":
        rope["factor"] = s.factor
    elif s.rope_type == "llama3":
        rope.update(factor=s.factor, low_freq_factor=s.low_freq_factor,
                    high_freq_factor=s.high_freq_factor,
                    original_max_position_embeddings=s.original_max_position_embeddings)
    out.update(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
               num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
               intermediate_size=cfg.intermediate_size, head_dim=cfg.dim_per_head,
               max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_eps,
               hidden_act="silu", rope_parameters=rope)
    if cfg.family == "llama":
        if cfg.qkv_bias != cfg.o_bias:
            raise ConfigError("llama: qkv_bias and o_bias must agree (HF attention_bias)")
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    if cfg.family == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if cfg.family == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None)
    return out
