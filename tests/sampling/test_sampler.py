"""The user-facing Sampler: text in and out, stop tokens, padded vocabulary, stop ids from a
checkpoint, bad input (ValueError before anything is traced), no recompilation per batch."""

import shutil

import numpy as np
import pytest

from jaxalign.models.hf import load_hf
from jaxalign.sampling import Sampler, loop, stop_ids_from_checkpoint
from tests.sampling.helpers import EOS, EOT, PAD, SPECIALS, TOKENIZER_SIZE

TEXTS = ["the cat sat on the mat", "hello world", "one two three four five six", "how are you"]


@pytest.fixture(scope="module")
def sampler(llama, tokenizer):
    cfg, params = llama
    return Sampler(cfg, params, tokenizer, max_len=32, buckets=(8, 16))


def test_rows_stop_at_any_listed_id_with_padding_after_and_right_lengths(sampler, tokenizer):
    free = sampler(TEXTS, temperature=0.0, max_new_tokens=12, stop_ids=[])
    assert (free.lengths == 12).all() and (free.stop_reason == "length").all()
    t = free.tokens[:, 0]
    stops = [int(t[0, 3]), int(t[1, 5])]  # two different stop ids, hit at different steps
    assert stops[0] != stops[1]
    out = sampler(TEXTS, temperature=0.0, max_new_tokens=12, stop_ids=stops)
    for r in range(len(TEXTS)):
        hits = [j for j in range(12) if t[r, j] in stops]
        n = hits[0] + 1 if hits else 12
        assert out.lengths[r, 0] == n
        assert out.stop_reason[r, 0] == ("stop" if hits else "length")
        np.testing.assert_array_equal(out.tokens[r, 0, :n], t[r, :n])
        assert (out.tokens[r, 0, n:] == PAD).all()
        assert (out.logprobs[r, 0, n:] == 0).all() and (out.model_logprobs[r, 0, n:] == 0).all()
        np.testing.assert_allclose(out.model_logprobs[r, 0, :n], free.model_logprobs[r, 0, :n],
                                   atol=1e-6)
        body = out.tokens[r, 0, :n - 1] if hits else out.tokens[r, 0, :n]  # no stop token
        assert out.texts[r][0].strip() == tokenizer.decode(body, skip_special_tokens=True)
    assert out.stop_reason[0, 0] == "stop" and out.stop_reason[1, 0] == "stop"
    assert out.lengths[0, 0] <= 4 and out.lengths[1, 0] <= 6
    # The prompt tokens went through the tokenizer (BOS first).
    assert out.prompt_tokens[0] == tokenizer(TEXTS[0])["input_ids"]


def test_texts_continue_the_prompt(sampler, tokenizer):
    """A word-level decoder drops the space before a sequence's first word: the texts keep it,
    so prompt + text tokenises back to prompt + completion (what a reward model reads)."""
    out = sampler(TEXTS, n=4, temperature=1.0, max_new_tokens=6, stop_ids=[], seed=3)
    checked = 0
    for r, prompt in enumerate(TEXTS):
        for j in range(4):
            body = out.tokens[r, j, :out.lengths[r, j]].tolist()
            if min(body) < len(SPECIALS):  # skipped when decoding: no exact round trip
                continue
            assert out.texts[r][j].startswith(" ")
            assert tokenizer(prompt + out.texts[r][j])["input_ids"] == out.prompt_tokens[r] + body
            checked += 1
    assert checked >= 8


def test_budget_is_capped_by_the_context(sampler):
    ids = [[5] * 28, [6] * 3]  # max_len=32: the first row has room for 4 tokens only
    out = sampler(prompt_ids=ids, temperature=0.0, max_new_tokens=12, stop_ids=[])
    assert out.lengths[:, 0].tolist() == [4, 12]
    assert (out.stop_reason == "length").all() and (out.tokens[0, 0, 4:] == PAD).all()


def test_padded_vocabulary_is_never_sampled(sampler, tokenizer):
    assert len(tokenizer) == TOKENIZER_SIZE < sampler.cfg.vocab_size  # padded rows past it
    out = sampler(TEXTS * 2, n=8, temperature=3.0, top_k=50, top_p=0.99, min_p=0.001,
                  max_new_tokens=12, stop_ids=[])
    assert out.tokens.max() < TOKENIZER_SIZE
    assert np.isfinite(out.logprobs).all() and (out.logprobs <= 0).all()


def test_stop_ids_come_from_generation_config(llama_dir, tmp_path):
    assert stop_ids_from_checkpoint(llama_dir) == (EOS, EOT)
    s = Sampler.from_pretrained(llama_dir)
    assert s.stop_ids == (EOS, EOT) and s.tokenizer is not None and s.vocab_size == TOKENIZER_SIZE
    plain = str(tmp_path / "plain")  # no generation_config.json: config.json's eos
    shutil.copytree(llama_dir, plain, ignore=shutil.ignore_patterns("generation_config.json"))
    assert stop_ids_from_checkpoint(plain) == (EOS,)
    cfg, params = load_hf(plain)
    assert Sampler(cfg, params).stop_ids == (EOS,)


@pytest.mark.parametrize("call", [
    dict(prompt_ids=[[5] * 32]),  # longer than the cache (max_len=32, room for one token)
    dict(prompts=[""]),
    dict(prompt_ids=[[]]),
    dict(prompts=TEXTS, top_p=0.0),
    dict(prompts=TEXTS, top_p=1.5),
    dict(prompts=TEXTS, n=0),
    dict(prompts=TEXTS, stop_ids=[64]),  # outside the vocabulary
    dict(prompts=TEXTS, stop_ids=[TOKENIZER_SIZE]),  # in the embedding table, past the tokenizer
    dict(prompts=TEXTS, temperature=-1.0),
    dict(prompts=TEXTS, max_new_tokens=0),
    dict(prompt_ids=[[5, 70]]),
    dict(prompts="one string"),
], ids=lambda c: ",".join(f"{k}={str(v)[:12]}" for k, v in c.items()))
def test_bad_input_raises_before_tracing(sampler, call):
    before = dict(loop.TRACES)
    with pytest.raises(ValueError):
        sampler(**call)
    assert dict(loop.TRACES) == before


def test_bad_stop_id_at_construction(llama, tokenizer):
    cfg, params = llama
    with pytest.raises(ValueError, match="stop id 99"):
        Sampler(cfg, params, tokenizer, stop_ids=[EOS, 99])


def test_no_recompilation_across_batches_in_the_same_bucket(sampler):
    settings = dict(n=3, temperature=0.8, max_new_tokens=6)
    sampler(prompt_ids=[[5, 6], [7, 8, 9], [10], [11, 12, 13, 14]], batch_size=4, **settings)
    before = dict(loop.TRACES)
    for batch in ([[20, 21, 22], [23], [24, 25]],  # 3 prompts: padded to 4 rows
                  [[30] * 8, [31, 32], [33], [34]],  # another length in the same bucket
                  [[5] * 7] * 8):  # two batches of 4 rows
        sampler(prompt_ids=batch, batch_size=4, **settings)
    assert dict(loop.TRACES) == before


def test_a_batch_caches_are_freed_before_the_next_batch_is_prefilled(sampler, monkeypatch):
    """The decode returns its state without the KV caches, so while batch i's results wait to be
    read back (batch i+1 is dispatched first) only batch i+1's caches are alive: at each
    prefill, no array of an earlier batch's cache shapes (keys and values) is still live."""
    import jax

    cache_shapes, seen, real = set(), [], sampler._prefill

    def prefill(*args, **kwargs):
        live = {x.shape for x in jax.live_arrays()}
        seen.append(len(live & cache_shapes))
        state = real(*args, **kwargs)
        cache_shapes.update(x.shape for x in jax.tree.leaves(state.caches) if x.ndim >= 3)
        return state

    monkeypatch.setattr(sampler, "_prefill", prefill)
    out = sampler(prompt_ids=[[5, 6, 7]] * 12, batch_size=4, n=2, max_new_tokens=6,
                  temperature=0.8)
    assert out.tokens.shape[:2] == (12, 2) and len(seen) == 3 and cache_shapes
    assert seen == [0, 0, 0], seen
