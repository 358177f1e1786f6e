"""Model configuration: one frozen dataclass for every supported decoder family.

Llama 2/3, Mistral and Qwen2 are the same pre-norm decoder (RMSNorm, rotary positions, gated
SiLU MLP, grouped-query attention) with different switches; GPT-2 is the LayerNorm / learned
positions / GELU variant. Gemma-2 is the Llama decoder with more switches: `(1 + w)` RMSNorms,
a norm after each sublayer as well as before (`post_norms`), embeddings scaled by
sqrt(hidden_size), GeGLU (`hidden_activation="gelu_pytorch_tanh"`), soft-capped attention
scores and final logits, queries scaled by `query_pre_attn_scalar ** -0.5`, and sliding-window
and global layers alternating (`layer_types`). Every switch defaults to the Llama behaviour.
The config is hashable so it can be a static jit argument.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

import jax.numpy as jnp

Family = Literal["llama", "mistral", "qwen2", "gpt2", "gemma2"]
FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "gemma2")
LAYER_TYPES = ("sliding_attention", "full_attention")  # Hugging Face's names
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")  # of the gated MLP: SwiGLU, GeGLU (tanh GELU)
ATTENTION_IMPLS = (None, "xla", "cudnn", "pallas")
LOGPROB_IMPLS = ("xla", "pallas")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary scaling as Hugging Face names it (`rope_type`): "default", "linear" or "llama3"."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


_COUNTS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
           "intermediate_size", "max_position_embeddings")


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r} "
                         f"({type(value).__name__})")


def _check_positive(name: str, value) -> None:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r} "
                         f"({type(value).__name__})")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: Family
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int | None = None  # default hidden_size // num_heads
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    sliding_window: int | None = None  # Mistral: a query sees keys at most window-1 tokens back
    # Per layer: "sliding_attention" (uses sliding_window) or "full_attention". None: every
    # layer uses sliding_window (Mistral). Gemma-2 alternates, starting with a sliding layer.
    layer_types: tuple[str, ...] | None = None
    attn_logit_softcap: float | None = None  # Gemma-2: scores -> cap * tanh(scores / cap)
    final_logit_softcap: float | None = None  # Gemma-2: logits -> cap * tanh(logits / cap)
    query_pre_attn_scalar: float | None = None  # scores scaled by this ** -0.5 (None: head_dim)
    hidden_activation: str = "silu"  # the gated MLP's: "silu" or "gelu_pytorch_tanh" (GeGLU)
    norm_unit_offset: bool = False  # Gemma: RMSNorm computes x * (1 + w), w initialised at 0
    post_norms: bool = False  # Gemma-2: a norm on each sublayer's output before the residual add
    scale_embeddings: bool = False  # Gemma: embeddings * sqrt(hidden_size), in the activation dtype
    qkv_bias: bool = False  # Qwen2: True; Llama: its `attention_bias` (GPT-2: always biases)
    o_bias: bool = False  # Llama: its `attention_bias`; Qwen2: False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # Execution choices: none of them changes the parameters or the math.
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"
    remat: Literal["none", "full", "dots"] = "none"
    scan_layers: bool = False  # lax.scan over the (always stacked) layer params: fast compiles
    # None / "xla": XLA attention; "cudnn": jax.nn.dot_product_attention's cuDNN kernel for full
    # sequences; "pallas": the decode step runs jaxalign.kernels.decode_attention's Pallas kernel
    # (full sequences stay on XLA). On CPU Pallas runs in its interpreter (slow: tests only).
    attention_impl: str | None = None
    # log-probs from hidden states (`lean`): "xla" (chunked) or "pallas" (fused kernel, which
    # implies lean), see jaxalign.kernels.logprobs
    logprob_impl: str = "xla"

    def __post_init__(self):
        for name in _COUNTS:  # a string "64" or a float 2.0 would fail deep inside JAX later
            _check_count(f"ModelConfig.{name}", getattr(self, name))
        if self.head_dim is None:  # canonical form, so configs compare equal after a round trip
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        _check_count("ModelConfig.head_dim", self.head_dim)
        if self.sliding_window is not None:
            _check_count("ModelConfig.sliding_window", self.sliding_window)
        if self.layer_types is not None:
            if isinstance(self.layer_types, str) or not hasattr(self.layer_types, "__iter__"):
                raise ValueError(f"ModelConfig.layer_types must be a sequence of {LAYER_TYPES}, "
                                 f"got {self.layer_types!r}")
            object.__setattr__(self, "layer_types", tuple(self.layer_types))  # hashable
            bad = [t for t in self.layer_types if t not in LAYER_TYPES]
            if bad:
                raise ValueError(f"ModelConfig.layer_types: unknown entries {bad} (expected "
                                 f"each of {LAYER_TYPES})")
            if len(self.layer_types) != self.num_layers:
                raise ValueError(f"ModelConfig.layer_types has {len(self.layer_types)} entries "
                                 f"for num_layers={self.num_layers} (one per layer)")
        for name in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar"):
            if getattr(self, name) is not None:
                _check_positive(f"ModelConfig.{name}", getattr(self, name))
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"ModelConfig.attention_impl: unsupported {self.attention_impl!r} "
                             f"(supported: {ATTENTION_IMPLS})")
        if self.logprob_impl not in LOGPROB_IMPLS:
            raise ValueError(f"ModelConfig.logprob_impl: unsupported {self.logprob_impl!r} "
                             f"(supported: {LOGPROB_IMPLS})")
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(f"ModelConfig.hidden_activation: unsupported "
                             f"{self.hidden_activation!r} (supported: {ACTIVATIONS})")
        for name in ("norm_unit_offset", "post_norms", "scale_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be true or false, got "
                                 f"{getattr(self, name)!r}")
        for name in ("norm_eps", "rope_theta"):
            _check_positive(f"ModelConfig.{name}", getattr(self, name))
        s = self.rope_scaling
        if s.rope_type != "default":
            _check_positive("ModelConfig.rope_scaling.factor", s.factor)
        if s.rope_type == "llama3":
            for name in ("low_freq_factor", "high_freq_factor"):
                _check_positive(f"ModelConfig.rope_scaling.{name}", getattr(s, name))
            _check_count("ModelConfig.rope_scaling.original_max_position_embeddings",
                         s.original_max_position_embeddings)
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family: unsupported {self.family!r}")
        if self.family == "gemma2" and not (self.norm_unit_offset and self.post_norms
                                            and self.scale_embeddings):
            raise ValueError("ModelConfig: family='gemma2' needs norm_unit_offset, post_norms "
                             "and scale_embeddings true (its checkpoints' layout and math)")
        if self.is_gpt2 and (self.post_norms or self.norm_unit_offset or self.layer_types
                             or self.attn_logit_softcap or self.query_pre_attn_scalar):
            raise ValueError("ModelConfig: gpt2 has LayerNorms, no rotary attention switches "
                             "(post_norms, norm_unit_offset, layer_types, attn_logit_softcap, "
                             "query_pre_attn_scalar must keep their defaults)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"ModelConfig.remat: expected none/full/dots, got {self.remat!r}")
        if self.rope_scaling.rope_type not in ("default", "linear", "llama3"):
            raise ValueError(
                f"ModelConfig.rope_scaling.rope_type: unsupported {self.rope_scaling.rope_type!r}"
            )

    @property
    def is_gpt2(self) -> bool:
        return self.family == "gpt2"

    @property
    def dim_per_head(self) -> int:
        return self.head_dim

    @property
    def attn_scale(self) -> float:
        """What attention scores are multiplied by: query_pre_attn_scalar ** -0.5, else
        head_dim ** -0.5."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def layer_window(self, layer: int) -> int | None:
        """Layer `layer`'s sliding window (None: it attends to every earlier token)."""
        if self.layer_types is not None and self.layer_types[layer] == "full_attention":
            return None
        return self.sliding_window

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)
