"""Class 7, damaged model files: every case is an error naming the file and the tensor or field.

The checkpoints are written offline by `save_hf` (no torch) from a tiny llama config, then
damaged: safetensors bytes and headers, config.json fields, the shard index.
"""

import json
import os
import re
import shutil
import struct

import jax
import numpy as np
import pytest

from jaxalign.models.config import ModelConfig, RopeScaling
from jaxalign.models.hf import CheckpointError, load_hf, save_hf
from jaxalign.models.hf_config import ConfigError
from jaxalign.models.safetensors_io import SafetensorsFile, write_safetensors
from jaxalign.models.transformer import param_shapes
from jaxalign.reward.hf import load_reward_hf

CFG = ModelConfig(family="llama", vocab_size=32, hidden_size=16, num_layers=2, num_heads=2,
                  num_kv_heads=1, intermediate_size=32, max_position_embeddings=32)
NORM = "model.norm.weight"
ST = r"model\.safetensors"
INDEX = r"model\.safetensors\.index\.json"
CONFIG = r"config\.json"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"single": dir, "sharded": dir} of the same tiny llama."""
    root = tmp_path_factory.mktemp("ckpt")
    rng = np.random.default_rng(0)  # random values, no init compile
    params = jax.tree.map(lambda s: jax.device_put(rng.normal(size=s.shape).astype(s.dtype)),
                          param_shapes(CFG))
    save_hf(str(root / "single"), CFG, params)
    save_hf(str(root / "sharded"), CFG, params, max_shard_bytes=4000)
    return {"single": root / "single", "sharded": root / "sharded"}


# ---- damage ----------------------------------------------------------------------------------

def _raw_header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _edit_header(edit):
    def damage(d):
        path = d / "model.safetensors"
        header, data = _raw_header(path)
        edit(header)
        blob = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return damage


def _retype(name, dtype):
    """Rewrites the file with tensor `name` stored (consistently) in an integer or bool dtype."""
    def damage(d):
        path = str(d / "model.safetensors")
        f = SafetensorsFile(path)
        arrays = {n: np.array(f[n]) for n in f.keys()}
        arrays[name] = arrays[name].astype(dtype)
        write_safetensors(path, [(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items()])
    return damage


def _truncate(d):
    path = d / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _header_past_end(d):
    path = d / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + path.read_bytes()[8:200])


def _overlap(header):
    begin, _ = header["model.embed_tokens.weight"]["data_offsets"]
    header[NORM]["data_offsets"] = [begin, begin + 4 * CFG.hidden_size]


def _config(edit):
    def damage(d):
        cfg = json.loads((d / "config.json").read_text())
        out = edit(cfg)
        (d / "config.json").write_text(out if isinstance(out, str) else json.dumps(out))
    return damage


def _set(**fields):
    return _config(lambda c: {**c, **fields})


def _llama3_without(key):
    def edit(c):
        rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}
        del rope[key]
        return {**c, "rope_parameters": rope}
    return _config(edit)


def _hub_rope_scaling(value):
    def edit(c):
        c = {k: v for k, v in c.items() if k != "rope_parameters"}
        return {**c, "rope_theta": 10000.0, "rope_scaling": value}
    return _config(edit)


def _index(edit):
    def damage(d):
        path = d / "model.safetensors.index.json"
        out = edit(json.loads(path.read_text()))
        path.write_text(out if isinstance(out, str) else json.dumps(out))
    return damage


def _index_missing_shard(index):
    index["weight_map"][NORM] = "model-00099-of-00099.safetensors"
    return index


def _index_wrong_shard(index):
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, f in index["weight_map"].items() if f == shards[0])
    index["weight_map"][name] = shards[1]
    return index


def _reward_head_as_int(d):
    """A reward checkpoint (lm_head replaced by score.weight) whose head is stored as I32."""
    path = str(d / "model.safetensors")
    f = SafetensorsFile(path)
    arrays = {n: np.array(f[n]) for n in f.keys() if n != "lm_head.weight"}
    arrays["score.weight"] = np.ones((1, CFG.hidden_size), np.int32)
    write_safetensors(path, [(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items()])
    _set(num_labels=1)(d)


# (id, checkpoint, damage, error type, message pattern after the directory)
CASES = [
    ("int_dtype_weight", "single", _retype(NORM, np.int32), CheckpointError,
     rf"{ST}: tensor 'model\.norm\.weight' is stored as I32, which cannot hold"),
    ("bool_dtype_weight", "single", _retype("model.layers.1.mlp.up_proj.weight", np.bool_),
     CheckpointError, rf"{ST}: tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is stored as BOOL"),
    ("truncated_data", "single", _truncate, CheckpointError,
     rf"{ST}: tensor 'lm_head\.weight': bytes \[\d+, \d+\) run past the end .* truncated"),
    ("header_length_past_end", "single", _header_past_end, CheckpointError,
     rf"{ST}: truncated or not a safetensors file \(header length 1000000 runs past the end"),
    ("byte_length_not_shape_x_dtype", "single", _edit_header(lambda h: h[NORM].update(shape=[8])),
     CheckpointError, rf"{ST}: tensor 'model\.norm\.weight': 64 bytes stored for shape \(8,\) "
     r"of F32, which needs 32"),
    ("offsets_past_end", "single",
     _edit_header(lambda h: h[NORM].update(data_offsets=[10**6, 10**6 + 64])), CheckpointError,
     rf"{ST}: tensor 'model\.norm\.weight': bytes \[1000000, 1000064\) run past the end"),
    ("overlapping_offsets", "single", _edit_header(_overlap), CheckpointError,
     rf"{ST}: the bytes of tensors '\S+' and '\S+' overlap"),
    ("header_not_object", "single", _edit_header(lambda h: h.update(__metadata__=[1])),
     CheckpointError, rf"{ST}: __metadata__ must be an object"),
    ("missing_tensor", "single", _edit_header(lambda h: h.pop(NORM)), CheckpointError,
     rf"{ST}: tensor 'model\.norm\.weight' is missing \(needed for final_norm/scale"),
    ("wrong_shape", "single", _edit_header(lambda h: h[NORM].update(shape=[4, 4])),
     CheckpointError, rf"{ST}: tensor 'model\.norm\.weight' has shape \(4, 4\), expected \(16,\)"),
    ("config_not_json", "single", _config(lambda c: "{not json"), ConfigError,
     rf"{CONFIG}: not valid JSON"),
    ("config_not_object", "single", _config(lambda c: [c]), ConfigError,
     rf"{CONFIG}: expected a JSON object of model settings, got a list"),
    ("hidden_size_string", "single", _set(hidden_size="16"), ConfigError,
     rf"{CONFIG}: field 'hidden_size' must be a positive integer, got '16' \(str\)"),
    ("num_layers_float", "single", _set(num_hidden_layers=2.0), ConfigError,
     rf"{CONFIG}: field 'num_hidden_layers' must be a positive integer, got 2\.0 \(float\)"),
    ("num_heads_zero", "single", _set(num_attention_heads=0), ConfigError,
     rf"{CONFIG}: field 'num_attention_heads' must be a positive integer, got 0"),
    ("rms_norm_eps_string", "single", _set(rms_norm_eps="1e-6"), ConfigError,
     rf"{CONFIG}: field 'rms_norm_eps' must be a positive number, got '1e-6'"),
    ("eos_token_id_string", "single", _set(eos_token_id="</s>"), ConfigError,
     rf"{CONFIG}: field 'eos_token_id' must be a non-negative integer token id"),
    ("tie_word_embeddings_string", "single", _set(tie_word_embeddings="false"), ConfigError,
     rf"{CONFIG}: field 'tie_word_embeddings' must be true or false"),
    ("heads_not_multiple_of_kv_heads", "single", _set(num_key_value_heads=3), ConfigError,
     rf"{CONFIG}: ModelConfig: num_heads=2 is not a multiple of num_kv_heads=3"),
    *[(f"llama3_without_{key}", "single", _llama3_without(key), ConfigError,
       rf"{CONFIG} \(rope_parameters\): missing field '{key}'")
      for key in ("factor", "low_freq_factor", "high_freq_factor",
                  "original_max_position_embeddings")],
    ("linear_rope_factor_string", "single",
     _hub_rope_scaling({"rope_type": "linear", "factor": "2"}), ConfigError,
     rf"{CONFIG} \(rope_scaling\): field 'factor' must be a positive number, got '2'"),
    ("rope_scaling_not_object", "single", _hub_rope_scaling("llama3"), ConfigError,
     rf"{CONFIG}: field 'rope_scaling' must be an object or null, got 'llama3'"),
    ("index_not_json", "sharded", _index(lambda i: "{"), CheckpointError,
     rf"{INDEX}: not valid JSON"),
    ("index_not_object", "sharded", _index(lambda i: [i]), CheckpointError,
     rf"{INDEX}: expected a JSON object with a 'weight_map', got a list"),
    ("index_without_weight_map", "sharded", _index(lambda i: {"metadata": {}}), CheckpointError,
     rf"{INDEX}: missing field 'weight_map'"),
    ("index_weight_map_not_object", "sharded", _index(lambda i: {"weight_map": ["a"]}),
     CheckpointError, rf"{INDEX}: field 'weight_map' must be an object"),
    ("index_names_missing_shard", "sharded", _index(_index_missing_shard), FileNotFoundError,
     rf"{INDEX}: weight_map puts tensor 'model\.norm\.weight' in shard "
     r"'model-00099-of-00099\.safetensors', but \S+ does not exist"),
    ("index_tensor_not_in_its_shard", "sharded", _index(_index_wrong_shard), CheckpointError,
     rf"{INDEX}: weight_map puts tensor '\S+' in \S+model-00002-of-\d+\.safetensors, which "
     "does not hold it"),
    ("reward_head_int_dtype", "single", _reward_head_as_int, CheckpointError,
     rf"{ST}: tensor 'score\.weight' is stored as I32, which cannot hold the float parameter "
     "the reward head"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_damaged_model_files_name_the_file_and_tensor(checkpoints, tmp_path, case):
    name, source, damage, error, pattern = case
    d = tmp_path / "ckpt"
    shutil.copytree(checkpoints[source], d)
    damage(d)
    load = load_reward_hf if name.startswith("reward") else load_hf
    with pytest.raises(error, match=re.escape(str(d) + os.sep) + pattern):
        load(str(d))


def test_intact_checkpoints_load(checkpoints):
    """The control: the undamaged single-file and sharded checkpoints load to the same params."""
    cfg, single = load_hf(str(checkpoints["single"]))
    cfg2, sharded = load_hf(str(checkpoints["sharded"]))
    assert cfg == cfg2 == CFG
    jax.tree.map(np.testing.assert_array_equal, single, sharded)


@pytest.mark.parametrize("fields, pattern", [
    (dict(hidden_size="16"), r"ModelConfig\.hidden_size must be a positive integer, got '16'"),
    (dict(num_layers=2.0), r"ModelConfig\.num_layers must be a positive integer, got 2\.0"),
    (dict(norm_eps=-1e-6), r"ModelConfig\.norm_eps must be a positive finite number"),
    (dict(rope_theta=float("nan")), r"ModelConfig\.rope_theta must be a positive finite number"),
    (dict(rope_scaling=RopeScaling("llama3", factor=0.0)),
     r"ModelConfig\.rope_scaling\.factor must be a positive finite number, got 0\.0"),
], ids=["hidden_size_string", "num_layers_float", "norm_eps_negative", "rope_theta_nan",
        "llama3_factor_zero"])
def test_model_config_refuses_fields_a_checkpoint_could_not_have(fields, pattern):
    """The same checks for configs built in code (presets, overrides), before any tracing."""
    with pytest.raises(ValueError, match=pattern):
        CFG.replace(**fields)
