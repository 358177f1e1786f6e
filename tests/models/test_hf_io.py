"""Checkpoint import/export: bfloat16, old-style configs, round trips, and clear errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T

from jaxalign.models import Transformer
from jaxalign.models.hf import CheckpointError, load_hf, save_hf
from jaxalign.models.hf_config import ConfigError
from jaxalign.models.safetensors_io import CheckpointTensors
from tests.models.hf_tiny import hf_logits, left_padded_batch, make_hf_model


def _ours(cfg, params, tokens, mask, positions):
    out, _, _ = jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(tokens),
                                                jnp.asarray(positions), jnp.asarray(mask))
    return np.asarray(out)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llama"))
    make_hf_model("llama").save_pretrained(path)
    return path


def test_bfloat16_checkpoint_with_old_style_config(tmp_path):
    """Hub checkpoints: bf16 weights, config with rope_theta/rope_scaling/torch_dtype."""
    make_hf_model("llama", seed=3).to(torch.bfloat16).save_pretrained(tmp_path)
    assert CheckpointTensors(str(tmp_path))["model.norm.weight"].dtype.name == "bfloat16"
    old_style = {  # hand-written, as hub config.json files of Llama-3.1 are
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 96,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 500.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16, "rope_type": "llama3"},
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 0,
        "eos_token_id": [1, 2]}
    with open(tmp_path / "config.json", "w") as fh:
        json.dump(old_style, fh)
    cfg, params = load_hf(str(tmp_path))
    assert cfg.rope_theta == 500.0 and cfg.rope_scaling.rope_type == "llama3"
    assert cfg.eos_token_id == (1, 2)
    assert params["layers"]["attn"]["q"]["kernel"].dtype == jnp.float32
    hf = T.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens, mask, positions = left_padded_batch(seed=1)
    want = hf_logits(hf, tokens, mask, positions)
    np.testing.assert_allclose(_ours(cfg, params, tokens, mask, positions)[mask], want[mask],
                               atol=1e-4, rtol=0)
    # Kept in bfloat16 on request: the stored values exactly.
    _, p16 = load_hf(str(tmp_path), param_dtype="bfloat16")
    np.testing.assert_array_equal(
        np.asarray(p16["final_norm"]["scale"]),
        np.asarray(CheckpointTensors(str(tmp_path))["model.norm.weight"]))


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2"])
def test_export_round_trip_and_transformers_loads_it(family, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_hf_model(family).save_pretrained(src)
    cfg, params = load_hf(str(src))
    save_hf(str(out), cfg, params)
    cfg2, params2 = load_hf(str(out))
    assert cfg2 == cfg
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 params, params2)
    hf = T.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens, mask, positions = left_padded_batch(seed=2)
    np.testing.assert_allclose(_ours(cfg, params, tokens, mask, positions)[mask],
                               hf_logits(hf, tokens, mask, positions)[mask], atol=1e-4, rtol=0)


def test_sharded_export_with_index(llama_dir, tmp_path):
    cfg, params = load_hf(llama_dir)
    save_hf(str(tmp_path), cfg, params, dtype="bfloat16", max_shard_bytes=20_000)
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    _, p16 = load_hf(str(tmp_path), param_dtype="bfloat16")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(
        np.asarray(a.astype(jnp.bfloat16)), np.asarray(b)), params, p16)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.load(open(path / "config.json"))
    cfg.update(changes)
    json.dump(cfg, open(path / "config.json", "w"))


def test_unknown_model_type(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "bad")
    _edit_config(bad, model_type="falcon")
    with pytest.raises(ConfigError, match=r"config\.json: model_type 'falcon' is not supported"):
        load_hf(str(bad))


def test_unsupported_rope_type_names_the_field(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "bad")
    _edit_config(bad, rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(ConfigError, match="rope_type 'yarn' is not supported"):
        load_hf(str(bad))


def test_missing_tensor(llama_dir, tmp_path):
    _edit_config(bad := _copy(llama_dir, tmp_path / "bad"), num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.2\.\S+' is missing"):
        load_hf(str(bad))


def test_wrong_shape_names_file_and_tensor(llama_dir, tmp_path):
    _edit_config(bad := _copy(llama_dir, tmp_path / "bad"), intermediate_size=48)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight' has shape"):
        load_hf(str(bad))


def test_pickle_weights_are_refused(llama_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(os.path.join(llama_dir, "config.json"), bad)
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*never loaded"):
        load_hf(str(bad))


def test_corrupt_safetensors_file(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json......}")
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file"):
        load_hf(str(bad))


def test_extra_tensors_from_another_head(tmp_path):
    torch.manual_seed(0)
    cls = T.LlamaForSequenceClassification(T.LlamaConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, num_labels=1, pad_token_id=0))
    cls.save_pretrained(tmp_path)
    _edit_config(tmp_path, tie_word_embeddings=True)
    with pytest.raises(CheckpointError, match=r"not used by a llama model, e\.g\. \['score\.weight'\]"):
        load_hf(str(tmp_path))
