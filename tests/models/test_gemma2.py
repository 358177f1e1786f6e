"""Gemma-2: logit and greedy-decoding parity with transformers (eager attention, float32),
export round trips, the reward head, the lean log-probs and the probe under the final
soft-cap, LoRA, presets, the chat template and its stop id, and bad configs.

The tiny model (tests/models/hf_tiny.py GEMMA2) has both soft-caps small enough that tanh bends
the values, a window of 3 shorter than the prompts, layer types (sliding, full, sliding),
query_pre_attn_scalar 12 != head_dim 8 and random `(1 + w)` norm weights.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxalign import losses
from jaxalign.data.tokenize import GEMMA2_CHAT_TEMPLATE
from jaxalign.models import ModelConfig, Transformer, completion_logprobs, unembedding
from jaxalign.models.hf import load_hf, save_hf
from jaxalign.models.hf_config import ConfigError, config_from_hf, config_to_hf
from jaxalign.models.presets import preset
from jaxalign.models.safetensors_io import CheckpointTensors
from jaxalign.models.sizing import param_count
from jaxalign.reward import load_reward_hf, reward_scores, save_reward_hf
from jaxalign.reward.probe import next_token_logprobs
from jaxalign.sampling import Sampler, stop_ids_from_checkpoint
from jaxalign.train.lora import LoraConfig, init_lora, matched_kernels, merge
from tests.sampling import helpers as sampling_helpers
from tests.models.hf_tiny import GEMMA2, hf_logits, left_padded_batch, make_gemma2

_forward = jax.jit(lambda cfg, p, t, pos, m: Transformer(cfg).apply({"params": p}, t, pos, m),
                   static_argnums=0)


def _logits(cfg, params, tokens, mask, positions):
    return np.asarray(_forward(cfg, params, jnp.asarray(tokens), jnp.asarray(positions),
                               jnp.asarray(mask))[0])


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """(HF model, checkpoint dir) of the tiny Gemma-2."""
    model = make_gemma2(seed=0)
    path = str(tmp_path_factory.mktemp("gemma2"))
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("scan", [True, False], ids=["scan_layers", "unrolled"])
def test_logits_match_transformers_left_padded(gemma, scan):
    hf, path = gemma
    cfg, params = load_hf(path, scan_layers=scan)
    assert cfg.family == "gemma2" and cfg.scan_layers == scan
    assert cfg.layer_types == tuple(GEMMA2["layer_types"]) and cfg.sliding_window == 3
    assert (cfg.attn_logit_softcap, cfg.final_logit_softcap) == (5.0, 3.0)
    assert cfg.attn_scale == 12 ** -0.5 != cfg.head_dim ** -0.5 and cfg.tie_word_embeddings
    tokens, mask, positions = left_padded_batch(length=9)  # rows of 9, 6, 3 tokens > window
    want = hf_logits(hf, tokens, mask, positions)
    got = _logits(cfg, params, tokens, mask, positions)
    assert want[mask].std() > 1.0, "logits near uniform: the test would not discriminate"
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-5, rtol=0)


@pytest.mark.parametrize("change", [dict(attn_logit_softcap=None, query_pre_attn_scalar=None),
                                    dict(layer_types=None)], ids=["no_cap_no_scalar",
                                                                  "all_sliding"])
def test_the_switches_change_the_logits(gemma, change):
    """The parity above would fail without the attention cap and scalar, or with the window in
    every layer (the final cap: see the lean log-probs test): the test discriminates."""
    hf, path = gemma
    cfg, params = load_hf(path)
    tokens, mask, positions = left_padded_batch(length=9)
    want = hf_logits(hf, tokens, mask, positions)
    got = _logits(cfg.replace(**change), params, tokens, mask, positions)
    assert np.abs(got[mask] - want[mask]).max() > 0.05


PROMPTS = [[5, 17, 9, 30, 11, 23, 8], [12, 40], [7, 7, 19, 33], [50]]  # longest 7 > window 3
NEW = 10


def _hf_greedy(model, prompts, pad=0):
    return sampling_helpers.hf_greedy(model, prompts, NEW, pad)


@pytest.fixture(scope="module")
def hf_greedy(gemma):
    hf, _ = gemma
    hf.generation_config.eos_token_id = None
    want, logits = _hf_greedy(hf, PROMPTS)
    # The comparison means something only if no step is a near tie between two tokens.
    top2 = np.sort(logits, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-3
    assert want.shape == (len(PROMPTS), NEW)
    return want, logits


@pytest.mark.parametrize("scan", [True, False], ids=["stacked_cache", "decode_layout"])
def test_greedy_decoding_matches_generate(gemma, hf_greedy, scan):
    """Prefill then one-token steps over a cache whose sliding layers see 3 slots back."""
    want, logits = hf_greedy
    cfg, params = load_hf(gemma[1], scan_layers=scan)
    out = Sampler(cfg, params, stop_ids=(), max_len=24)(
        prompt_ids=PROMPTS, temperature=0.0, max_new_tokens=NEW)
    np.testing.assert_array_equal(out.tokens[:, 0], want)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    want_lp = np.take_along_axis(logits, want[..., None], -1)[..., 0] - lse
    np.testing.assert_allclose(out.model_logprobs[:, 0], want_lp, atol=1e-4)


def test_export_round_trip_is_bit_exact_and_transformers_loads_it(gemma, tmp_path):
    hf, path = gemma
    cfg, params = load_hf(path)
    save_hf(str(tmp_path), cfg, params)
    src, out = CheckpointTensors(path), CheckpointTensors(str(tmp_path))
    assert out.names() == src.names() - {"lm_head.weight"}  # tied: no separate head
    for name in out.names():  # the four norms of every layer included
        np.testing.assert_array_equal(out[name], src[name], err_msg=name)
    config = json.load(open(tmp_path / "config.json"))
    assert config["architectures"] == ["Gemma2ForCausalLM"]
    assert config["layer_types"] == GEMMA2["layer_types"]
    assert config["query_pre_attn_scalar"] == 12 and config["final_logit_softcapping"] == 3.0
    assert load_hf(str(tmp_path))[0] == cfg and config_from_hf(config_to_hf(cfg, "float32")) == cfg
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    tokens, mask, positions = left_padded_batch(seed=2, length=9)
    np.testing.assert_allclose(hf_logits(loaded, tokens, mask, positions)[mask],
                               hf_logits(hf, tokens, mask, positions)[mask], atol=1e-6, rtol=0)


def test_old_style_config_reads_the_same(gemma, tmp_path):
    """Hub config.json files: rope_theta instead of rope_parameters, no layer_types (transformers
    then alternates, sliding first)."""
    d = json.load(open(os.path.join(gemma[1], "config.json")))
    d.pop("rope_parameters")
    d.update(rope_theta=10000.0, num_hidden_layers=4, torch_dtype="float32")
    del d["layer_types"]
    cfg = config_from_hf(d)
    assert cfg.layer_types == ("sliding_attention", "full_attention") * 2
    assert cfg.rope_theta == 10000.0 and cfg.num_layers == 4


def test_sequence_classifier_scores_and_export(tmp_path):
    """Gemma2ForSequenceClassification: the score head on the final hidden state, no soft-cap."""
    hf = make_gemma2(seed=4, cls=T.Gemma2ForSequenceClassification, num_labels=1)
    hf.save_pretrained(tmp_path / "src")
    cfg, params = load_reward_hf(str(tmp_path / "src"))
    assert cfg.family == "gemma2" and cfg.final_logit_softcap == 3.0
    tokens, mask, positions = left_padded_batch(seed=5, length=9)
    tokens[mask & (tokens == 0)] = 3  # HF finds the last token as the last non-pad id
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(int)),
                  position_ids=torch.tensor(positions)).logits[:, 0].numpy()
    got = np.asarray(jax.jit(reward_scores, static_argnums=0)(cfg, params, tokens, mask))
    assert np.ptp(want) > 0.5, "scores nearly equal: the test would not discriminate"
    assert np.abs(3.0 * np.tanh(want / 3.0) - want).max() > 1e-2  # a stray cap would show
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    save_reward_hf(str(tmp_path / "out"), cfg, params)
    config = json.load(open(tmp_path / "out" / "config.json"))
    assert config["architectures"] == ["Gemma2ForSequenceClassification"]
    src, out = CheckpointTensors(str(tmp_path / "src")), CheckpointTensors(str(tmp_path / "out"))
    assert out.names() == src.names()
    for name in out.names():
        np.testing.assert_array_equal(out[name], src[name], err_msg=name)


def test_lean_logprobs_and_probe_apply_the_final_cap(gemma):
    """`completion_logprobs(lean=True)` (hidden states + unembedding, chunked) and the judges'
    token probe equal the model's own soft-capped logits; the chunked gradient equals the
    plain one (small chunks and vocabulary blocks, so several of each)."""
    cfg, params = load_hf(gemma[1])
    tokens, mask, positions = left_padded_batch(seed=6, length=9)
    loss_mask = mask & (np.arange(9) >= 5)[None]
    ids = jnp.asarray([3, 40, 95])

    @jax.jit
    def run(params):
        seqs = [completion_logprobs(cfg, params, tokens, mask, loss_mask, lean=lean).sum
                for lean in (False, True)]
        uncapped = completion_logprobs(cfg.replace(final_logit_softcap=None), params, tokens,
                                       mask, loss_mask, lean=True).sum
        probe = next_token_logprobs(cfg, params, tokens, mask, ids)
        logits, _, hidden = Transformer(cfg).apply({"params": params}, tokens, positions, mask)
        return seqs, uncapped, probe, logits, hidden

    (plain, lean), uncapped, probe, logits, hidden = run(params)
    np.testing.assert_allclose(lean, plain, rtol=1e-6)
    assert np.abs(uncapped - plain).max() > 0.1  # the cap matters for these numbers
    np.testing.assert_allclose(probe, jax.nn.log_softmax(logits[:, -1], -1)[:, ids], atol=1e-5)

    targets = jnp.asarray(np.roll(tokens, -1, axis=1))

    def plain_sum(h, w):
        capped = 3.0 * jnp.tanh(jnp.einsum("btd,dv->btv", h, w) / 3.0)
        return losses.token_logprobs(logits_BxTxV=capped, targets_BxT=targets).sum()

    def lean_sum(h, w):
        return losses.token_logprobs_from_hidden(
            hidden_BxTxD=h, unembed_DxV=w, targets_BxT=targets, chunk_size=4, vocab_block=40,
            softcap=cfg.final_logit_softcap).sum()

    w = unembedding(cfg, params)
    (v_plain, g_plain), (v_lean, g_lean) = (
        jax.jit(jax.value_and_grad(f, (0, 1)))(hidden, w) for f in (plain_sum, lean_sum))
    np.testing.assert_allclose(v_lean, v_plain, rtol=1e-6)
    for a, b in zip(g_lean, g_plain):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="softcap"):
        losses.token_logprobs_from_hidden(hidden_BxTxD=hidden, unembed_DxV=w,
                                          targets_BxT=targets, softcap=-1.0)


def test_lora_on_gemma2(gemma):
    cfg, params = load_hf(gemma[1])
    lcfg = LoraConfig(rank=2, alpha=4.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
    kernels = matched_kernels(params, lcfg)
    assert len(kernels) == 7 and all(m[0] == "layers" for m in kernels)  # norms: no kernel
    adapters = jax.jit(init_lora, static_argnums=1)(params, lcfg, jax.random.key(1))
    merged = jax.jit(merge, static_argnums=2)
    tokens, mask, positions = left_padded_batch(length=9)
    base = _logits(cfg, params, tokens, mask, positions)
    np.testing.assert_array_equal(_logits(cfg, merged(params, adapters, lcfg), tokens, mask,
                                          positions), base)  # b = 0: the base model
    adapters = jax.tree.map(lambda x: x + 0.1, adapters)
    moved = _logits(cfg, merged(params, adapters, lcfg), tokens, mask, positions)
    assert np.isfinite(moved).all() and np.abs(moved - base).max() > 1e-2


@pytest.mark.parametrize("name,count", [("gemma-2-2b", 2_614_341_888),
                                        ("gemma-2-9b", 9_241_705_984),
                                        ("gemma-2-27b", 27_227_128_320)],
                         ids=["2b", "9b", "27b"])
def test_presets_and_parameter_counts(name, count):
    cfg = preset(name)
    assert param_count(cfg) == count  # 9B: the known 9.24B
    assert cfg.layer_types[:4] == ("sliding_attention", "full_attention") * 2
    assert (cfg.sliding_window, cfg.attn_logit_softcap, cfg.final_logit_softcap) == (4096, 50, 30)
    assert cfg.vocab_size == 256000 and cfg.tie_word_embeddings
    assert cfg.attn_scale == (144 if name == "gemma-2-27b" else 256) ** -0.5
    assert preset(name + "-it").eos_token_id == (1, 107)


SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<unk>"]
WORDS = "user model hello world how are you fine".split()
WORDS += [f"w{i}" for i in range(GEMMA2["vocab_size"] - len(SPECIALS + WORDS))]  # no padded ids
EOT = SPECIALS.index("<end_of_turn>")


def _gemma_tokenizer():
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + WORDS)},
                                    unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=GEMMA2_CHAT_TEMPLATE)


def test_chat_template_renders_gemma2_turns_and_refuses_a_system_role():
    tok = _gemma_tokenizer()
    msgs = [{"role": "user", "content": " hello "}, {"role": "assistant", "content": "fine"},
            {"role": "user", "content": "how are you"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\nfine<end_of_turn>\n"
        "<start_of_turn>user\nhow are you<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template([{"role": "system", "content": "x"}] + msgs, tokenize=False)


def test_it_checkpoint_stops_at_end_of_turn(gemma, hf_greedy, tmp_path):
    """A Gemma-2-IT-like dir: generation_config.json lists [<eos>, <end_of_turn>]; the sampler
    takes both as stop ids and a row ends on <end_of_turn>."""
    hf, _ = gemma
    hf.save_pretrained(tmp_path)
    _gemma_tokenizer().save_pretrained(tmp_path)
    with open(tmp_path / "generation_config.json", "w") as fh:
        json.dump({"bos_token_id": 2, "eos_token_id": [1, EOT], "pad_token_id": 0}, fh)
    assert stop_ids_from_checkpoint(str(tmp_path)) == (1, EOT)
    sampler = Sampler.from_pretrained(str(tmp_path), max_len=24)
    assert sampler.stop_ids == (1, EOT) and sampler.tokenizer.convert_ids_to_tokens(EOT) == \
        "<end_of_turn>"
    # Relabel the token row 0 says at step j as <end_of_turn> (swap their tied embedding rows):
    # the same model under other ids, which now ends its turn at step j.
    seq, used = [int(t) for t in hf_greedy[0][0]], {x for p in PROMPTS for x in p} | {1, EOT}
    j = next(j for j in range(NEW) if seq[j] not in used | set(seq[:j]))
    _, params = load_hf(str(tmp_path))
    emb, swap = params["embed"]["embedding"], jnp.array([seq[j], EOT])
    sampler.set_params({**params, "embed": {"embedding": emb.at[swap].set(emb[swap[::-1]])}})
    out = sampler(prompt_ids=PROMPTS, temperature=0.0, max_new_tokens=NEW)
    assert out.stop_reason[0, 0] == "stop" and out.lengths[0, 0] == j + 1
    assert int(out.tokens[0, 0, j]) == EOT and list(out.tokens[0, 0, :j]) == seq[:j]


@pytest.mark.parametrize("change,match", [
    (dict(layer_types=["sliding_attention", "local", "full_attention"]),
     r"config\.json: field 'layer_types' has unknown entries 'local'"),
    (dict(layer_types=["sliding_attention", "full_attention"]),
     r"config\.json: field 'layer_types' has 2 entries for num_hidden_layers=3"),
    (dict(layer_types="sliding_attention"), r"config\.json: field 'layer_types' must be a list"),
    (dict(hidden_activation="gelu"), r"config\.json: hidden_activation 'gelu'"),
    (dict(attn_logit_softcapping=-1.0), r"config\.json: field 'attn_logit_softcapping'"),
], ids=["unknown_entry", "wrong_length", "not_a_list", "activation", "negative_cap"])
def test_bad_config_json_names_file_and_key(gemma, tmp_path, change, match):
    d = json.load(open(os.path.join(gemma[1], "config.json")))
    d.update(change)
    with open(tmp_path / "config.json", "w") as fh:
        json.dump(d, fh)
    with pytest.raises(ConfigError, match=match):
        load_hf(str(tmp_path))


_TINY = dict(family="gemma2", vocab_size=16, hidden_size=16, num_layers=2, num_heads=2,
             num_kv_heads=1, intermediate_size=32, norm_unit_offset=True, post_norms=True,
             scale_embeddings=True)


@pytest.mark.parametrize("change,match", [
    (dict(layer_types=("sliding_attention", "global")), r"ModelConfig\.layer_types: unknown"),
    (dict(layer_types=("full_attention",)), r"ModelConfig\.layer_types has 1 entries"),
    (dict(attn_logit_softcap=0.0), r"ModelConfig\.attn_logit_softcap"),
    (dict(hidden_activation="relu"), r"ModelConfig\.hidden_activation"),
    (dict(post_norms=False), r"family='gemma2' needs"),
    (dict(family="llama", post_norms=True, norm_unit_offset=False, scale_embeddings=False),
     r"config_to_hf: a llama config\.json cannot express post_norms"),
], ids=["unknown_type", "wrong_length", "zero_cap", "activation", "gemma2_layout", "llama_export"])
def test_bad_model_config_is_a_clear_error(change, match):
    with pytest.raises(ValueError, match=match):
        config_to_hf(ModelConfig(**{**_TINY, **change}), "float32")
