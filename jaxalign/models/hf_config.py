"""Hugging Face config.json <-> ModelConfig.

Reads both styles: transformers 5 (`rope_parameters`, `dtype`) and the one most hub checkpoints
carry (`rope_scaling`, `rope_theta`, `torch_dtype`). Anything that would change the math and is
not implemented is refused with the offending field named; unrelated keys are ignored.
"""

from __future__ import annotations

import math
import os
from typing import Any

from jaxalign import io
from jaxalign.models.config import LAYER_TYPES, ModelConfig, RopeScaling

SUPPORTED = ("llama", "mistral", "qwen2", "gpt2", "gemma2")
_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
         "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel", "gemma2": "Gemma2ForCausalLM"}
# transformers' Gemma2Config defaults, for keys a config.json leaves out (null stays null).
_GEMMA2_DEFAULTS = dict(
    head_dim=256, max_position_embeddings=8192, hidden_activation="gelu_pytorch_tanh",
    query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
    attn_logit_softcapping=50.0, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
    bos_token_id=2)
# ModelConfig switches only Gemma-2's config.json can express (their Llama-like defaults).
_GEMMA2_SWITCHES = dict(layer_types=None, attn_logit_softcap=None, final_logit_softcap=None,
                        query_pre_attn_scalar=None, hidden_activation="silu",
                        norm_unit_offset=False, post_norms=False, scale_embeddings=False)


class ConfigError(ValueError):
    pass


def read_hf_config(directory: str) -> dict[str, Any]:
    """The parsed config.json of a checkpoint directory (a JSON object, else ConfigError)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no config.json in the checkpoint directory")
    return io.read_json_object(path, ConfigError, "a JSON object of model settings")


# ---- typed fields: a wrong type is named here, not found later deep inside JAX -------------

_REQUIRED = object()


def _field(d: dict, key: str, where: str, kind: str, default: Any = _REQUIRED):
    """d[key] checked to be `kind`: "pos_int" (> 0), "id" (int >= 0), "pos_float" (finite,
    > 0), "float" (finite), "bool" or "str"; a missing or null field gives `default`."""
    value = d.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ConfigError(f"{where}: missing field {key!r}")
        return default
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = is_int or isinstance(value, float)
    ok, want = {
        "pos_int": (is_int and value > 0, "a positive integer"),
        "id": (is_int and value >= 0, "a non-negative integer token id"),
        "pos_float": (is_num and math.isfinite(value) and value > 0, "a positive number"),
        "float": (is_num and math.isfinite(value), "a finite number"),
        "bool": (isinstance(value, bool), "true or false"),
        "str": (isinstance(value, str), "a string"),
    }[kind]
    if not ok:
        raise ConfigError(f"{where}: field {key!r} must be {want}, got {value!r} "
                          f"({type(value).__name__})")
    return float(value) if kind in ("pos_float", "float") else value


def _pad_id(d: dict, where: str):
    if d.get("pad_token_id") == -1:  # early Llama conversions: -1 meant "no pad token"
        return None
    return _field(d, "pad_token_id", where, "id", None)


def _eos_field(d: dict, where: str):
    e = d.get("eos_token_id")
    if isinstance(e, list):  # several end tokens (Llama 3)
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in e):
            raise ConfigError(f"{where}: field 'eos_token_id' must be a token id or a list of "
                              f"them, got {e!r}")
        return tuple(e)
    return _field(d, "eos_token_id", where, "id", None)


def _rope(d: dict, where: str) -> tuple[float, RopeScaling]:
    params = d.get("rope_parameters")
    key = "rope_parameters"
    if params is None:  # hub style
        key = "rope_scaling"
        params = d.get("rope_scaling") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{where}: field 'rope_scaling' must be an object or null, got "
                              f"{params!r}")
        params = dict(params)
        params.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: field {key!r} must be an object, got {params!r}")
    at = f"{where} ({key})"
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise ConfigError(f"{at}: rope_type {kind!r} is not supported "
                          "(supported: default, linear, llama3)")
    if _field(params, "partial_rotary_factor", at, "pos_float", 1.0) != 1.0:
        raise ConfigError(f"{at}: partial_rotary_factor != 1 is not supported")
    theta = _field(params, "rope_theta", at, "pos_float", 10000.0)
    scaling = RopeScaling(rope_type=kind)
    if kind == "linear":
        scaling = RopeScaling("linear", factor=_field(params, "factor", at, "pos_float"))
    elif kind == "llama3":  # every key is required, as transformers' rope validation has it
        scaling = RopeScaling(
            "llama3", factor=_field(params, "factor", at, "pos_float"),
            low_freq_factor=_field(params, "low_freq_factor", at, "pos_float"),
            high_freq_factor=_field(params, "high_freq_factor", at, "pos_float"),
            original_max_position_embeddings=_field(
                params, "original_max_position_embeddings", at, "pos_int"))
    return theta, scaling


def _require(d: dict, key: str, where: str):
    return _field(d, key, where, "pos_int")


def _layer_types(d: dict, where: str, num_layers: int) -> tuple[str, ...]:
    """Gemma-2's `layer_types`, checked; missing: alternating, starting with a sliding layer
    (transformers' default)."""
    types = d.get("layer_types")
    if types is None:
        return tuple("sliding_attention" if i % 2 == 0 else "full_attention"
                     for i in range(num_layers))
    if not isinstance(types, list):
        raise ConfigError(f"{where}: field 'layer_types' must be a list of {LAYER_TYPES}, got "
                          f"{types!r}")
    bad = sorted({repr(t) for t in types if t not in LAYER_TYPES})
    if bad:
        raise ConfigError(f"{where}: field 'layer_types' has unknown entries {', '.join(bad)} "
                          f"(expected each of {LAYER_TYPES})")
    if len(types) != num_layers:
        raise ConfigError(f"{where}: field 'layer_types' has {len(types)} entries for "
                          f"num_hidden_layers={num_layers} (one per layer)")
    return tuple(types)


def _gemma2_fields(d: dict, where: str) -> dict[str, Any]:
    """The Gemma-2 switches of ModelConfig from a (defaults-filled) gemma2 config.json."""
    act = d.get("hidden_activation")
    if act != "gelu_pytorch_tanh":
        raise ConfigError(f"{where}: hidden_activation {act!r} is not supported for gemma2 "
                          "(expected 'gelu_pytorch_tanh')")
    if _field(d, "use_bidirectional_attention", where, "bool", False):
        raise ConfigError(f"{where}: use_bidirectional_attention=true is not supported")
    return dict(
        layer_types=_layer_types(d, where, _require(d, "num_hidden_layers", where)),
        sliding_window=_field(d, "sliding_window", where, "pos_int", None),
        attn_logit_softcap=_field(d, "attn_logit_softcapping", where, "pos_float", None),
        final_logit_softcap=_field(d, "final_logit_softcapping", where, "pos_float", None),
        query_pre_attn_scalar=_field(d, "query_pre_attn_scalar", where, "pos_float"),
        hidden_activation=act, norm_unit_offset=True, post_norms=True, scale_embeddings=True)


def config_from_hf(d: dict[str, Any], where: str = "config.json", **overrides) -> ModelConfig:
    """ModelConfig from a parsed config.json; `overrides` set execution fields (dtype, remat...).

    Every field read is type-checked (a string "64" or a float 2.0 where a count belongs is a
    ConfigError naming `where` and the field), as is the resulting config.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a JSON object, got a {type(d).__name__}")
    mt = d.get("model_type")
    if mt not in SUPPORTED:
        raise ConfigError(f"{where}: model_type {mt!r} is not supported (supported: {SUPPORTED})")
    if mt == "gemma2":
        d = {**_GEMMA2_DEFAULTS, **d}
    common = dict(bos_token_id=_field(d, "bos_token_id", where, "id", None),
                  pad_token_id=_pad_id(d, where),
                  eos_token_id=_eos_field(d, where),
                  initializer_range=_field(d, "initializer_range", where, "float", 0.02),
                  tie_word_embeddings=_field(d, "tie_word_embeddings", where, "bool",
                                             mt == "gpt2"))
    if mt == "gpt2":
        for key, ok in (("scale_attn_by_inverse_layer_idx", False),
                        ("reorder_and_upcast_attn", False), ("scale_attn_weights", True),
                        ("add_cross_attention", False)):
            if d.get(key, ok) != ok:
                raise ConfigError(f"{where}: {key}={d[key]!r} is not supported")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"{where}: activation_function {act!r} is not supported")
        n_embd, n_head = _require(d, "n_embd", where), _require(d, "n_head", where)
        if n_embd % n_head:
            raise ConfigError(f"{where}: n_embd={n_embd} is not a multiple of n_head={n_head}")
        return _build(
            where, family="gpt2", vocab_size=_require(d, "vocab_size", where),
            hidden_size=n_embd, num_layers=_require(d, "n_layer", where), num_heads=n_head,
            num_kv_heads=n_head,
            intermediate_size=_field(d, "n_inner", where, "pos_int", 4 * n_embd),
            max_position_embeddings=_field(d, "n_positions", where, "pos_int", 1024),
            norm_eps=_field(d, "layer_norm_epsilon", where, "pos_float", 1e-5), qkv_bias=True,
            o_bias=True, mlp_bias=True, **common, **overrides)
    act = d.get("hidden_act", "silu")
    if act != "silu" and mt != "gemma2":  # gemma2 reads hidden_activation (_gemma2_fields)
        raise ConfigError(f"{where}: hidden_act {act!r} is not supported (expected 'silu')")
    gemma = _gemma2_fields(d, where) if mt == "gemma2" else {}
    if mt == "qwen2" and _field(d, "use_sliding_window", where, "bool", False):
        raise ConfigError(f"{where}: use_sliding_window=true is not supported for qwen2")
    theta, scaling = _rope(d, where)
    heads = _require(d, "num_attention_heads", where)
    attn_bias = _field(d, "attention_bias", where, "bool", False)
    return _build(
        where, family=mt, vocab_size=_require(d, "vocab_size", where),
        hidden_size=_require(d, "hidden_size", where),
        num_layers=_require(d, "num_hidden_layers", where), num_heads=heads,
        num_kv_heads=_field(d, "num_key_value_heads", where, "pos_int", heads),
        intermediate_size=_require(d, "intermediate_size", where),
        head_dim=_field(d, "head_dim", where, "pos_int", None),
        max_position_embeddings=_field(d, "max_position_embeddings", where, "pos_int", 2048),
        norm_eps=_field(d, "rms_norm_eps", where, "pos_float", 1e-6), rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=(_field(d, "sliding_window", where, "pos_int", None)
                        if mt == "mistral" else gemma.pop("sliding_window", None)),
        qkv_bias=True if mt == "qwen2" else attn_bias,
        o_bias=False if mt == "qwen2" else attn_bias,
        mlp_bias=_field(d, "mlp_bias", where, "bool", False) if mt == "llama" else False,
        **gemma, **common, **overrides)


def _build(where: str, **fields) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except ValueError as e:  # ModelConfig's own checks (e.g. heads vs kv heads)
        raise ConfigError(f"{where}: {e}") from e


def config_to_hf(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    """config.json in the transformers 5 style (`rope_parameters`, `dtype`)."""
    eos = list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
    if cfg.family != "gemma2":
        odd = [k for k, v in _GEMMA2_SWITCHES.items() if getattr(cfg, k) != v]
        if odd:
            raise ConfigError(f"config_to_hf: a {cfg.family} config.json cannot express "
                              f"{', '.join(odd)} (Gemma-2 switches; family='gemma2' can)")
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
    if cfg.family == "gemma2":
        if cfg.qkv_bias != cfg.o_bias:
            raise ConfigError("gemma2: qkv_bias and o_bias must agree (HF attention_bias)")
        types = cfg.layer_types or ("sliding_attention",) * cfg.num_layers  # None: all windowed
        out.update(hidden_act=cfg.hidden_activation, hidden_activation=cfg.hidden_activation,
                   attention_bias=cfg.qkv_bias, sliding_window=cfg.sliding_window,
                   layer_types=list(types),
                   query_pre_attn_scalar=_number(cfg.query_pre_attn_scalar or cfg.dim_per_head),
                   attn_logit_softcapping=cfg.attn_logit_softcap,
                   final_logit_softcapping=cfg.final_logit_softcap)
    if cfg.family == "llama":
        if cfg.qkv_bias != cfg.o_bias:
            raise ConfigError("llama: qkv_bias and o_bias must agree (HF attention_bias)")
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    if cfg.family == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if cfg.family == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None)
    return out


def _number(x: float) -> int | float:
    """An integral float as an int (transformers types query_pre_attn_scalar as int)."""
    return int(x) if float(x).is_integer() else x
