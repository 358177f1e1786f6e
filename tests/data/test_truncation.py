"""Truncation: the DPO reference's rules, lengths checked by hand."""

import pytest

from jaxalign.data import load_dataset, truncate
from jaxalign.data.tokenize import cut_prompt
from tests.data.helpers import write_jsonl

P8 = list(range(100, 108))  # an 8-token prompt
CUT = dict(max_length=10, max_prompt_length=4)


def seq(n, start=0):
    return list(range(start, start + n))


def test_fits_untouched():
    # 5 + longer 5 = 10 <= 10
    assert truncate(seq(5, 100), [seq(5), seq(3)], **CUT) == (seq(5, 100), [seq(5), seq(3)])


@pytest.mark.parametrize("mode, kept", [("keep_end", [104, 105, 106, 107]),
                                        ("keep_start", [100, 101, 102, 103])])
def test_prompt_cut_first(mode, kept):
    # 8 + longer 5 = 13 > 10: prompt -> 4 tokens; 4 + 5 = 9 <= 10: completions untouched.
    p, (c, r) = truncate(P8, [seq(3), seq(5)], truncation_mode=mode, **CUT)
    assert p == kept and c == seq(3) and r == seq(5)


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
def test_then_completions_cut_to_max_length_minus_max_prompt(mode):
    # 8 + 9 = 17 > 10: prompt -> 4; 4 + 9 = 13 > 10: completions -> their first 10 - 4 = 6.
    p, (c, r) = truncate(P8, [seq(9), seq(2)], truncation_mode=mode, **CUT)
    assert len(p) == 4 and c == seq(6) and r == seq(2)
    assert len(p) + max(len(c), len(r)) == 10


def test_short_prompt_long_completion():
    # 3 + 12 = 15 > 10: the 3-token prompt is already <= 4; 3 + 12 > 10: completion -> 6.
    p, (c,) = truncate(seq(3, 100), [seq(12)], **CUT)
    assert p == seq(3, 100) and c == seq(6)


def test_keep_end_keeps_bos():
    bos = 1
    assert cut_prompt([bos] + P8, 4, "keep_end", bos) == [bos, 105, 106, 107]
    assert cut_prompt([bos] + P8, 4, "keep_start", bos) == [bos, 100, 101, 102]
    assert cut_prompt(P8, 4, "keep_end", bos) == [104, 105, 106, 107]


def test_bad_settings():
    with pytest.raises(ValueError, match="truncation_mode"):
        truncate(P8, [seq(5)], truncation_mode="middle", **CUT)
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        truncate(P8, [seq(5)], max_length=4, max_prompt_length=4)


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
def test_end_to_end_lengths(plain_tokenizer, tmp_path, mode):
    tok = plain_tokenizer
    prompt = "\n\nHuman: " + "The quick brown fox jumps over the lazy dog. " * 4 + "\n\nAssistant:"
    long = " The sea is blue and wide." * 6
    rows = [{"prompt": prompt, "chosen": long, "rejected": " Paris."},
            {"prompt": "Hello", "chosen": " world", "rejected": " the sea"}]
    ds, _ = load_dataset("preference", write_jsonl(tmp_path / "t.jsonl", rows), tok,
                         max_length=32, max_prompt_length=12, truncation_mode=mode)
    full_prompt = tok(prompt)["input_ids"]  # with BOS
    full_long = tok(long, add_special_tokens=False)["input_ids"]
    assert len(full_prompt) > 12 and len(full_long) > 20
    r = ds[0]
    assert len(r["prompt"]) == 12 and len(r["chosen"]) == 32 - 12
    assert list(r["chosen"]) == full_long[:20]  # completions keep their start (EOS cut off)
    assert list(r["rejected"]) == tok(" Paris.", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id]
    if mode == "keep_end":  # BOS + the last 11 prompt tokens
        assert list(r["prompt"]) == full_prompt[:1] + full_prompt[-11:]
    else:
        assert list(r["prompt"]) == full_prompt[:12]
    short = ds[1]
    assert list(ds.lengths) == [32, len(short["prompt"]) + max(len(short["chosen"]),
                                                              len(short["rejected"]))]
    assert ds[1]["prompt"].tolist() == tok("Hello")["input_ids"]  # short rows untouched

    # Prompt data: cut to max_prompt_length.
    ds, _ = load_dataset("prompt", write_jsonl(tmp_path / "p.jsonl", rows), tok,
                         max_length=32, max_prompt_length=12, truncation_mode=mode)
    assert len(ds[0]["prompt"]) == 12 and ds.max_length == 12
