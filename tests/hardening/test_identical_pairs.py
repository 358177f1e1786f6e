"""Class 8, pairs that become identical after tokenization or truncation.

Such a pair trains with zero gradient. Its text differs (identical text is rejected by the
reader), but its token ids do not: on_error="raise" (the default) stops at its file:line,
on_error="skip" drops it and counts it under "identical_tokens" in the report.
"""

import json

import pytest

from jaxalign.data import DataError, from_token_rows, load_dataset, toy

GOOD = {"prompt": "tell me", "chosen": " good day", "rejected": " bad day"}
LONG = " good day good day"  # 4 tokens; the cases below keep at most 4 completion tokens

# (id, bad row, load_dataset settings, message after "path:2: ")
CASES = [
    ("differ_beyond_truncation", {"prompt": "tell me", "chosen": LONG + " good",
                                  "rejected": LONG + " bad"},
     dict(max_length=8, max_prompt_length=4),
     r"identical after truncation to 4 completion tokens \(max_length=8, "
     r"max_prompt_length=4\): they differ only from completion token 4 on"),
    ("one_is_a_prefix_cut_away", {"prompt": "tell me", "chosen": LONG,
                                  "rejected": LONG + " then the cat"},
     dict(max_length=8, max_prompt_length=4), r"differ only from completion token 4 on"),
    ("long_prompt_cut_too", {"prompt": "tell me about your morning " * 3,
                             "chosen": LONG + " good", "rejected": LONG + " bad"},
     dict(max_length=10, max_prompt_length=6, truncation_mode="keep_start"),
     r"truncation to 4 completion tokens \(max_length=10, max_prompt_length=6\)"),
    ("unknown_words_same_ids", {"prompt": "tell me", "chosen": " the zebra",
                                "rejected": " the giraffe"}, {},
     r"differ as text but tokenize to the same 3 ids"),
    ("whitespace_same_ids", {"prompt": "tell me", "chosen": " good day",
                             "rejected": "  good   day"}, {},
     r"differ as text but tokenize to the same 3 ids"),
]


@pytest.mark.parametrize("row, settings, message", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_pairs_identical_as_tokens_follow_on_error(tmp_path, row, settings, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (GOOD, row, GOOD)))
    tokenizer = toy.word_tokenizer()
    with pytest.raises(DataError, match=rf"pairs\.jsonl:2: chosen and rejected .*{message}") \
            as err:
        load_dataset("preference", path, tokenizer, **settings)
    assert err.value.reason == "identical_tokens"
    ds, report = load_dataset("preference", path, tokenizer, on_error="skip", **settings)
    assert len(ds) == 2 and ds.locations == [f"{path}:1", f"{path}:3"]
    assert report.skipped == {"identical_tokens": 1} and report.kept == 2
    assert report.first[0].startswith(f"{path}:2: ")
    assert all((r["chosen"].tolist() != r["rejected"].tolist()) for r in ds)


def test_generated_pair_of_identical_ids_is_refused():
    """Rows of sampled ids (never re-tokenized) are checked alike, naming the row."""
    rows = [{"prompt": [5, 6], "chosen": [7, 8], "rejected": [7, 9]},
            {"prompt": [5, 6], "chosen": [7, 8], "rejected": [7, 8]}]
    with pytest.raises(DataError, match=r"shard\.jsonl:2: chosen and rejected are the same "
                       "token ids") as err:
        from_token_rows("preference", rows, pad_id=0, max_length=8,
                        locations=["shard.jsonl:1", "shard.jsonl:2"])
    assert err.value.reason == "identical_tokens"
