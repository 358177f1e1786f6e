"""Flax decoder LMs (Llama 2/3, Mistral, Qwen2, GPT-2, Gemma-2) and Hugging Face weight mapping.

logprobs.py  a completion's token and summed log-probs under a model (the one copy)
sizing.py    a config's parameters on a mesh: counts, bytes, and `place_params` (the one copy)
paths.py     parameter trees as {path: leaf} and back (HF mapping, LoRA)
"""

from jaxalign.models.config import ModelConfig, RopeScaling
from jaxalign.models.logprobs import completion_logprobs, completion_token_logprobs
from jaxalign.models.sizing import place_params
from jaxalign.models.transformer import (
    KVCache, Transformer, attention_mask, candidate_mask, commit_candidate, final_softcap,
    init_cache, init_params, layer_masks, param_logical_axes, param_shapes, positions_from_mask,
    split_layers, stack_layers, unembedding)

__all__ = [
    "KVCache", "ModelConfig", "RopeScaling", "Transformer", "attention_mask", "candidate_mask",
    "commit_candidate", "completion_logprobs", "completion_token_logprobs", "final_softcap",
    "init_cache", "init_params", "layer_masks", "param_logical_axes", "param_shapes",
    "place_params", "positions_from_mask", "split_layers", "stack_layers", "unembedding",
]
