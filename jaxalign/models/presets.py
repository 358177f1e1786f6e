"""Configs of well-known checkpoints, written as their hub config.json files are (old style:
`rope_theta`, `rope_scaling`, `torch_dtype`), so sizing and abstract shape checks need no download.
"""

from __future__ import annotations

from jaxalign.models.config import ModelConfig
from jaxalign.models.hf_config import config_from_hf

_MISTRAL_7B = dict(
    model_type="mistral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
    max_position_embeddings=32768, rms_norm_eps=1e-5, hidden_act="silu", bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=False, torch_dtype="bfloat16")

# google/gemma-2-*: hub config.json files carry no `layer_types` (transformers then alternates,
# sliding first) and repeat the activation as `hidden_act`; the -it models differ only in the
# stop ids, which their generation_config.json lists as [<eos>, <end_of_turn>] = [1, 107].
_GEMMA2 = dict(
    model_type="gemma2", architectures=["Gemma2ForCausalLM"], vocab_size=256000, head_dim=256,
    max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
    hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
    attention_bias=False, attention_dropout=0.0, sliding_window=4096,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256,
    cache_implementation="hybrid", initializer_range=0.02, bos_token_id=2, eos_token_id=1,
    pad_token_id=0, tie_word_embeddings=True, torch_dtype="float32")
_GEMMA2_2B = dict(_GEMMA2, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4)
_GEMMA2_9B = dict(_GEMMA2, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                  num_attention_heads=16, num_key_value_heads=8)
_GEMMA2_27B = dict(_GEMMA2, hidden_size=4608, intermediate_size=36864, num_hidden_layers=46,
                   num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                   query_pre_attn_scalar=144, torch_dtype="bfloat16")
_IT_EOS = [1, 107]  # generation_config.json of gemma-2-*-it: <eos>, <end_of_turn>

HUB_CONFIGS: dict[str, dict] = {
    "gemma-2-2b": _GEMMA2_2B,
    "gemma-2-2b-it": dict(_GEMMA2_2B, eos_token_id=_IT_EOS),
    "gemma-2-9b": _GEMMA2_9B,
    "gemma-2-9b-it": dict(_GEMMA2_9B, eos_token_id=_IT_EOS),
    "gemma-2-27b": _GEMMA2_27B,
    "gemma-2-27b-it": dict(_GEMMA2_27B, eos_token_id=_IT_EOS),
    "mistral-7b-v0.1": dict(_MISTRAL_7B, rope_theta=10000.0, sliding_window=4096),
    "mistral-7b-instruct-v0.2": dict(_MISTRAL_7B, rope_theta=1e6, sliding_window=None),
    "llama-2-7b": dict(
        model_type="llama", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
        bos_token_id=1, eos_token_id=2, torch_dtype="float16"),
    "llama-3-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=None, bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16"),
    # meta-llama/Meta-Llama-3-70B's config.json (Meta-Llama-3-70B-Instruct has its shapes; its
    # generation_config.json adds the stop id <|eot_id|> = 128009)
    "llama-3-70b": dict(
        model_type="llama", vocab_size=128256, hidden_size=8192, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, intermediate_size=28672,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=None, bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16"),
    "llama-3.1-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16"),
    # A LlamaForSequenceClassification (one label) on Llama-3.1-8B-Instruct with a [PAD] token
    # added (vocab 128257); its config.json. A reward model: `reward.model` adds the head.
    "skywork-reward-llama-3.1-8b": dict(
        model_type="llama", vocab_size=128257, hidden_size=4096, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009], pad_token_id=128256,
        tie_word_embeddings=False, torch_dtype="bfloat16"),
    "qwen2-0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
        max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, use_sliding_window=False, sliding_window=131072,
        bos_token_id=151643, eos_token_id=151643, torch_dtype="bfloat16"),
    "gpt2": dict(model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12,
                 n_positions=1024, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                 bos_token_id=50256, eos_token_id=50256),
    # The two random models of the sampling and training benchmarks.
    "bench-tiny": dict(
        model_type="llama", vocab_size=256, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0),
    "bench-100m": dict(
        model_type="llama", vocab_size=32000, hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=4, intermediate_size=2048,
        max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in HUB_CONFIGS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(HUB_CONFIGS)}")
    return config_from_hf(HUB_CONFIGS[name], where=f"preset {name!r}", **overrides)
