"""Hugging Face `*ForSequenceClassification` reward checkpoints <-> reward-model params.

    cfg, params = load_reward_hf("/path/to/RM")     # Llama/Mistral/Qwen2/GPT-2/Gemma-2, 1 label
    save_reward_hf("/tmp/rm", cfg, params)           # AutoModelForSequenceClassification loads it

Tensor names: the backbone as in the causal LM (`model.*`, or `transformer.*` for GPT-2) plus
`score.weight` [1, D]. The backbone goes through `jaxalign.models.hf.load_params` (sharded,
memory-mapped); the head is read here. The tensor-name check is strict: a tensor that is
neither backbone nor head (an `lm_head`, a second head) is refused, as is a checkpoint without
`score.weight` (a causal LM) or with more than one label (a classifier, not a reward model).
"""

from __future__ import annotations

import os
import re

import numpy as np
from jax.sharding import Mesh

from jaxalign import sharding as shd
from jaxalign.models.hf import (CheckpointError, check_tensor, load_params, save_hf,
                                tensor_sources)
from jaxalign.models.hf_config import config_from_hf, read_hf_config
from jaxalign.models.safetensors_io import CheckpointTensors
from jaxalign.reward.model import SCORE_AXES, backbone_config

SCORE = "score.weight"
ARCHITECTURES = {"llama": "LlamaForSequenceClassification",
                 "mistral": "MistralForSequenceClassification",
                 "qwen2": "Qwen2ForSequenceClassification",
                 "gpt2": "GPT2ForSequenceClassification",
                 "gemma2": "Gemma2ForSequenceClassification"}
# Buffers some checkpoints carry that are not parameters (as jaxalign.models.hf ignores them).
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$")


def _config_labels(d: dict) -> int | None:
    if "id2label" in d and d["id2label"]:
        return len(d["id2label"])
    return d.get("num_labels")


def _check_names(directory: str, ckpt: CheckpointTensors, cfg) -> None:
    prefix = "" if "wte.weight" in ckpt else "transformer."
    wanted = set()
    for path, src in tensor_sources(backbone_config(cfg), prefix).items():
        names = [src.name.format(i=i) for i in range(cfg.num_layers)] if path[0] == "layers" \
            else [src.name]
        wanted.update(names)
    if SCORE not in ckpt:
        hint = (" It has an 'lm_head.weight': a causal LM, not a reward model; build a reward "
                "model on it with init_reward_params(cfg, rng, backbone=params)."
                if "lm_head.weight" in ckpt else "")
        raise CheckpointError(f"{directory}: no score head (tensor {SCORE!r} is missing); "
                              f"a *ForSequenceClassification checkpoint is needed.{hint}")
    extra = sorted(n for n in ckpt.names() - wanted - {SCORE} if not _IGNORED.search(n))
    if extra:
        raise CheckpointError(f"{directory}: {len(extra)} tensors are neither the {cfg.family} "
                              f"backbone nor the score head, e.g. {extra[:4]}")


def load_reward_hf(directory: str, *, mesh: Mesh | None = None, rules=shd.LOGICAL_RULES,
                   **overrides):
    """(ModelConfig, {"model": backbone, "score": {"kernel": [D, 1]}}) from a HF reward dir.

    `overrides` set execution fields of the config (`param_dtype`, `remat`, ...). Parameters
    default to float32 whatever the checkpoint's dtype.
    """
    where = os.path.join(directory, "config.json")
    d = read_hf_config(directory)
    cfg = config_from_hf(d, where=where, **overrides)
    labels = _config_labels(d)
    if labels is not None and labels != 1:
        raise CheckpointError(f"{where}: {labels} labels (id2label/num_labels); a scalar reward "
                              "model has exactly one (num_labels=1)")
    ckpt = CheckpointTensors(directory)
    _check_names(directory, ckpt, cfg)
    shape = ckpt.shape(SCORE)
    if len(shape) != 2 or shape[1] != cfg.hidden_size:
        raise CheckpointError(f"{ckpt.file_of(SCORE)}: tensor {SCORE!r} has shape {shape}, "
                              f"expected [num_labels, {cfg.hidden_size}]")
    if shape[0] != 1:
        raise CheckpointError(f"{ckpt.file_of(SCORE)}: tensor {SCORE!r} has {shape[0]} labels; a "
                              "scalar reward model has exactly one (num_labels=1)")
    check_tensor(ckpt, SCORE, (1, cfg.hidden_size), "the reward head")
    backbone = load_params(directory, backbone_config(cfg), mesh=mesh, rules=rules, strict=False)
    kernel = np.asarray(ckpt[SCORE], dtype=cfg.jnp_param_dtype).T  # torch Linear: [out, in]
    kernel = shd.place(kernel, SCORE_AXES["kernel"], mesh, rules)
    return cfg, {"model": backbone, "score": {"kernel": kernel}}


def _host(x) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def save_reward_hf(directory: str, cfg, params, *, dtype: str | None = None,
                   max_shard_bytes: int = 5 * 2**30) -> None:
    """Write a `*ForSequenceClassification` checkpoint: config.json (architecture, one label,
    `pad_token_id`) and safetensors with the backbone and `score.weight` (`save_hf`: a URL
    directory works, and with several processes all call it and process 0 writes)."""
    if cfg.pad_token_id is None:
        raise ValueError("save_reward_hf: cfg.pad_token_id is None; transformers' sequence "
                         "classifiers need it to find the last token of right-padded rows")
    head = (SCORE, (1, cfg.hidden_size),
            lambda: _host(params["score"]["kernel"]).T)  # torch Linear: [out, in]
    save_hf(directory, backbone_config(cfg), params["model"], dtype=dtype,
            max_shard_bytes=max_shard_bytes, extra_tensors=[head], config_update=dict(
                architectures=[ARCHITECTURES[cfg.family]], num_labels=1,
                id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                tie_word_embeddings=cfg.tie_word_embeddings, pad_token_id=cfg.pad_token_id))
