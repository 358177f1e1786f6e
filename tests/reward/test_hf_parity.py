"""Score parity with transformers' *ForSequenceClassification, export round trips, bad input."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers as T

from jaxalign.models.hf import CheckpointError
from jaxalign.reward import load_reward_hf, reward_scores, save_reward_hf
from jaxalign.sharding import make_mesh
from tests.models.hf_tiny import make_hf_model
from tests.reward.hf_tiny_cls import FAMILIES, hf_scores, make_hf_classifier, padded_batch


_scores = jax.jit(reward_scores, static_argnums=0)  # one compile per config and shape


def _ours(cfg, params, tokens, mask):
    return np.asarray(_scores(cfg, params, tokens, mask))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_ckpt(request, tmp_path_factory):
    model = make_hf_classifier(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, str(path)


def test_score_parity_right_and_left_padded(family_ckpt):
    family, hf, path = family_ckpt
    cfg, params = load_reward_hf(path)
    assert cfg.family == family and cfg.pad_token_id == 0
    assert params["score"]["kernel"].shape == (cfg.hidden_size, 1)
    for side in ("right", "left"):
        tokens, mask, positions = padded_batch(side)
        # HF finds the last token as the rightmost non-pad id (rows never hold the pad id), and
        # needs explicit position ids for left padding (right padding: its default arange).
        want = hf_scores(hf, tokens, mask, positions if side == "left" else None)
        got = _ours(cfg, params, tokens, mask)
        assert got.dtype == np.float32 and got.shape == (4,)
        assert np.ptp(want) > 1.0, "scores nearly equal: the test would not discriminate"
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_export_round_trip_is_exact_and_transformers_loads_it(family_ckpt, tmp_path):
    family, hf, path = family_ckpt
    cfg, params = load_reward_hf(path)
    save_reward_hf(str(tmp_path), cfg, params)
    config = json.load(open(tmp_path / "config.json"))
    assert config["architectures"] == [type(hf).__name__]
    assert config["num_labels"] == 1 and config["pad_token_id"] == 0
    cfg2, params2 = load_reward_hf(str(tmp_path))
    assert cfg2 == cfg
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 params, params2)
    loaded = T.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, dtype=torch.float32).eval()
    assert type(loaded) is type(hf) and loaded.config.num_labels == 1
    for name, tensor in hf.state_dict().items():  # the same tensors, bit for bit
        np.testing.assert_array_equal(loaded.state_dict()[name].numpy(), tensor.numpy(), name)
    tokens, mask, _ = padded_batch("right", seed=3)
    np.testing.assert_allclose(hf_scores(loaded, tokens, mask), _ours(cfg, params, tokens, mask),
                               atol=1e-4, rtol=0)


def test_sharded_bfloat16_export(tmp_path):
    make_hf_classifier("llama").save_pretrained(tmp_path / "src")
    cfg, params = load_reward_hf(str(tmp_path / "src"))
    out = tmp_path / "out"
    save_reward_hf(str(out), cfg, params, dtype="bfloat16", max_shard_bytes=20_000)
    index = json.load(open(out / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1 and "score.weight" in index["weight_map"]
    mesh = make_mesh(data=2, fsdp=4)
    _, p16 = load_reward_hf(str(out), param_dtype="bfloat16", mesh=mesh)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(
        np.asarray(a.astype(b.dtype)), np.asarray(b)), params, p16)
    assert tuple(p16["score"]["kernel"].sharding.spec) == ("fsdp", None)
    assert p16["model"]["embed"]["embedding"].sharding.spec[1] == "fsdp"


def test_causal_lm_checkpoint_has_no_score_head(tmp_path):
    make_hf_model("llama").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"no score head \(tensor 'score\.weight' is "
                       r"missing\).*'lm_head\.weight': a causal LM"):
        load_reward_hf(str(tmp_path))


def test_more_than_one_label_is_refused(tmp_path):
    make_hf_classifier("qwen2", num_labels=3).save_pretrained(tmp_path / "three")
    with pytest.raises(CheckpointError, match=r"config\.json: 3 labels .* exactly one"):
        load_reward_hf(str(tmp_path / "three"))
    # A config that claims one label over a two-row head: the tensor is checked too.
    bad = shutil.copytree(tmp_path / "three", tmp_path / "bad")
    config = json.load(open(bad / "config.json"))
    config["id2label"], config["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    json.dump(config, open(bad / "config.json", "w"))
    with pytest.raises(CheckpointError, match=r"'score\.weight' has 3 labels"):
        load_reward_hf(str(bad))


def test_export_needs_a_pad_token(tmp_path):
    make_hf_classifier("gpt2").save_pretrained(tmp_path / "src")
    cfg, params = load_reward_hf(str(tmp_path / "src"))
    with pytest.raises(ValueError, match="pad_token_id is None"):
        save_reward_hf(str(tmp_path / "out"), cfg.replace(pad_token_id=None), params)
