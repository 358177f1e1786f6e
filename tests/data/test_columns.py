"""Scalar columns, the "group" kind and datasets built from generated token ids."""

import json
import math
import re

import numpy as np
import pytest

from jaxalign.data import (BatchIterator, DataError, TokenizedDataset, collate, from_token_rows,
                           load_dataset, write_records)
from tests.data.helpers import assert_same as _assert_same
from tests.data.helpers import assistant, take, user, write_jsonl


def assert_same(batches_a, batches_b):
    _assert_same(batches_a, batches_b, dtypes=True)

COLS = {"reward": "float32", "source": "int32"}


def i32(*ids):
    return np.array(ids, np.int32)


def dtypes_and_shapes(batch):
    return {k: (v.shape, v.dtype.name) for k, v in batch.items()}


# ---- collate, by hand ----

def test_collate_sft_with_columns_by_hand():
    r = {"prompt": i32(1, 5), "completion": i32(7, 2), "reward": 0.25, "source": 3}
    batch = collate("sft", [r, None], np.array([6, -1]), 5, pad_id=9, columns=COLS)
    assert dtypes_and_shapes(batch) == {
        "tokens": ((2, 5), "int32"), "mask": ((2, 5), "bool"), "loss_mask": ((2, 5), "bool"),
        "index": ((2,), "int64"), "reward": ((2,), "float32"), "source": ((2,), "int32")}
    np.testing.assert_array_equal(batch["tokens"], [[1, 5, 7, 2, 9], [9] * 5])
    np.testing.assert_array_equal(batch["mask"], [[1, 1, 1, 1, 0], [0] * 5])
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 1, 1, 0], [0] * 5])
    np.testing.assert_array_equal(batch["reward"], [0.25, 0.0])  # padding row: 0
    np.testing.assert_array_equal(batch["source"], [3, 0])
    np.testing.assert_array_equal(batch["index"], [6, -1])


def test_collate_preference_with_columns_by_hand():
    # SPPO's win rates: chosen_probs* are columns, not the batch's chosen_* arrays.
    cols = {"chosen_probs": "float32", "chosen_probs_win": "float32",
            "chosen_probs_lose": "float32"}
    r = {"prompt": i32(1, 5, 6), "chosen": i32(7, 2), "rejected": i32(8, 9, 10, 2),
         "chosen_probs": 0.75, "chosen_probs_win": 0.5, "chosen_probs_lose": 0.125}
    batch = collate("preference", [None, r], np.array([-1, 4]), 8, pad_id=0, columns=cols)
    assert dtypes_and_shapes(batch) == {
        **{f"{s}_{k}": ((2, 8), d) for s in ("chosen", "rejected")
           for k, d in (("tokens", "int32"), ("mask", "bool"), ("loss_mask", "bool"))},
        "index": ((2,), "int64"), **{c: ((2,), "float32") for c in cols}}
    np.testing.assert_array_equal(batch["chosen_tokens"][1], [1, 5, 6, 7, 2, 0, 0, 0])
    np.testing.assert_array_equal(batch["rejected_loss_mask"][1], [0, 0, 0, 1, 1, 1, 1, 0])
    assert not batch["chosen_mask"][0].any() and (batch["rejected_tokens"][0] == 0).all()
    np.testing.assert_array_equal(batch["chosen_probs"], [0.0, 0.75])
    np.testing.assert_array_equal(batch["chosen_probs_win"], [0.0, 0.5])
    np.testing.assert_array_equal(batch["chosen_probs_lose"], [0.0, 0.125])


def test_collate_group_by_hand():
    r0 = {"prompt": i32(1, 5), "completions": [i32(7), i32(8, 9, 2), i32(3, 2)],
          "reward": np.array([1.0, -0.5, 2.0], np.float32), "source": np.array([0, 1, 2])}
    r1 = {"prompt": i32(1, 4, 4), "completions": [i32(6, 2), i32(2), i32(5, 5, 5)],
          "reward": [0.0, 0.5, 1.5], "source": [3, 4, 5]}
    batch = collate("group", [r0, r1, None], np.array([2, 0, -1]), 6, pad_id=0, columns=COLS)
    assert dtypes_and_shapes(batch) == {
        "tokens": ((3, 3, 6), "int32"), "mask": ((3, 3, 6), "bool"),
        "loss_mask": ((3, 3, 6), "bool"), "index": ((3,), "int64"),
        "reward": ((3, 3), "float32"), "source": ((3, 3), "int32")}
    np.testing.assert_array_equal(batch["tokens"][0], [[1, 5, 7, 0, 0, 0], [1, 5, 8, 9, 2, 0],
                                                       [1, 5, 3, 2, 0, 0]])
    np.testing.assert_array_equal(batch["mask"][0], [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0],
                                                     [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch["loss_mask"][0], [[0, 0, 1, 0, 0, 0],
                                                          [0, 0, 1, 1, 1, 0],
                                                          [0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch["tokens"][1], [[1, 4, 4, 6, 2, 0], [1, 4, 4, 2, 0, 0],
                                                       [1, 4, 4, 5, 5, 5]])
    np.testing.assert_array_equal(batch["loss_mask"][1], [[0, 0, 0, 1, 1, 0],
                                                          [0, 0, 0, 1, 0, 0],
                                                          [0, 0, 0, 1, 1, 1]])
    assert (batch["tokens"][2] == 0).all() and not batch["mask"][2].any()
    assert not batch["loss_mask"][2].any()
    np.testing.assert_array_equal(batch["reward"], [[1.0, -0.5, 2.0], [0.0, 0.5, 1.5], [0] * 3])
    np.testing.assert_array_equal(batch["source"], [[0, 1, 2], [3, 4, 5], [0] * 3])
    np.testing.assert_array_equal(batch["index"], [2, 0, -1])
    # A batch of padding rows only (a host's share of a last batch) needs K to keep its shape.
    pad = collate("group", [None], np.array([-1]), 6, pad_id=0, columns=COLS, group_size=3)
    assert pad["tokens"].shape == (1, 3, 6) and pad["reward"].shape == (1, 3)
    with pytest.raises(ValueError, match="group_size"):
        collate("group", [None], np.array([-1]), 6, pad_id=0)


@pytest.mark.parametrize("name", ["tokens", "index", "chosen_mask", "rejected_loss_mask",
                                  "weight", "prompt", "completions"])
def test_reserved_column_names(name):
    r = {"prompt": i32(1), "completion": i32(2)}
    with pytest.raises(ValueError, match=f"column '{name}' collides"):
        collate("sft", [r], np.array([0]), 4, pad_id=0, columns={name: "float32"})
    with pytest.raises(ValueError, match=f"column '{name}' collides"):
        TokenizedDataset(kind="sft", records=[r], pad_id=0, max_length=4, locations=["a:1"],
                         columns={name: "float32"})
    with pytest.raises(ValueError, match=f"column '{name}' collides"):
        from_token_rows("sft", [{"prompt": [1], "completion": [2]}], pad_id=0, max_length=4,
                        columns={name: "float32"})


def test_column_dtype_must_be_numeric():
    with pytest.raises(ValueError, match="column 'tag': dtype must be an integer or float"):
        collate("sft", [], np.zeros(0), 4, pad_id=0, columns={"tag": "str"})
    with pytest.raises(ValueError, match="column 'x': 'nope' is not a numpy dtype"):
        collate("sft", [], np.zeros(0), 4, pad_id=0, columns={"x": "nope"})


def test_dataset_names_a_record_missing_a_column_or_of_another_k():
    records = [{"prompt": i32(1), "completion": i32(2), "reward": 1.0},
               {"prompt": i32(1), "completion": i32(3)}]
    with pytest.raises(DataError, match=re.escape("b.jsonl:9: column 'reward' is missing")):
        TokenizedDataset(kind="sft", records=records, pad_id=0, max_length=4,
                         locations=["b.jsonl:4", "b.jsonl:9"], columns={"reward": "float32"})
    records = [{"prompt": i32(1), "completions": [i32(2)]},
               {"prompt": i32(1), "completions": [i32(2), i32(3)]}]
    with pytest.raises(DataError, match=re.escape("b.jsonl:9: 2 completions, but b.jsonl:4 "
                                                  "has 1")):
        TokenizedDataset(kind="group", records=records, pad_id=0, max_length=4,
                         locations=["b.jsonl:4", "b.jsonl:9"])


# ---- from_token_rows ----

def group_rows(n, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return [{"prompt": rng.integers(3, 50, rng.integers(1, 6)).tolist(),
             "completions": [rng.integers(3, 50, rng.integers(1, 9)) for _ in range(k)],
             "reward": rng.normal(size=k).tolist(), "source": [i] * k} for i in range(n)]


def test_group_dataset_last_partial_batch_and_hosts():
    ds = from_token_rows("group", group_rows(5), pad_id=0, max_length=16, columns=COLS)
    assert ds.group_size == 3 and ds.locations == [f"row {i}" for i in range(5)]
    assert list(ds.lengths) == [len(r["prompt"]) + max(map(len, r["completions"])) for r in ds]
    first, last = take(BatchIterator(ds, batch_size=4, shuffle=False, buckets=(8, 16)), 2)
    T = last["tokens"].shape[-1]
    assert dtypes_and_shapes(last) == {
        "tokens": ((4, 3, T), "int32"), "mask": ((4, 3, T), "bool"),
        "loss_mask": ((4, 3, T), "bool"), "index": ((4,), "int64"),
        "reward": ((4, 3), "float32"), "source": ((4, 3), "int32")}
    np.testing.assert_array_equal(last["index"], [4, -1, -1, -1])
    pad = last["index"] == -1
    assert (last["tokens"][pad] == 0).all() and not last["mask"][pad].any()
    assert not last["loss_mask"][pad].any()
    assert (last["reward"][pad] == 0).all() and (last["source"][pad] == 0).all()
    np.testing.assert_array_equal(last["source"][0], [4, 4, 4])
    np.testing.assert_array_equal(first["reward"],
                                  np.array([r["reward"] for r in group_rows(4)], np.float32))
    for b in range(4):  # each completion's loss mask covers exactly its tokens
        for k, c in enumerate(ds[b]["completions"]):
            np.testing.assert_array_equal(first["tokens"][b, k][first["loss_mask"][b, k]], c)
    # Host 3's share of the last batch is all padding, with the same shape as the others'.
    hosts = [take(BatchIterator(ds, batch_size=4, shuffle=False, buckets=(8, 16),
                                process_index=h, process_count=4), 2)[1] for h in range(4)]
    for key in last:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in hosts]), last[key])


UF_ROWS = [{"messages": [user("hi there"), assistant("Hello! How can I help?")]},
           {"prompt": "What is two plus two?", "completion": " It is four."},
           {"messages": [user("What is the capital of France?"), assistant("Paris.")]},
           {"prompt": "Hello", "completion": " world, how are you?"},
           {"prompt": "The quick brown fox", "completion": " jumps over the lazy dog."}]


def test_token_rows_give_the_batches_of_load_dataset(chat_tokenizer, tmp_path):
    tok = chat_tokenizer
    ref, _ = load_dataset("sft", write_jsonl(tmp_path / "sft.jsonl", UF_ROWS), tok)
    # As a grow step saves them: prompt ids as a list, completion ids as an int64 array.
    rows = [{"prompt": r["prompt"].tolist(), "completion": r["completion"].astype(np.int64)}
            for r in ref]
    ds = from_token_rows("sft", rows, pad_id=ref.pad_id, max_length=ref.max_length,
                         vocab_size=len(tok))
    assert ds.kind == ref.kind and list(ds.lengths) == list(ref.lengths)
    for a, b in zip(ds, ref):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype == np.int32 and a[k].ndim == 1
            np.testing.assert_array_equal(a[k], b[k])
    kw = dict(batch_size=2, seed=4, buckets=(32, ref.max_length))
    assert_same(take(BatchIterator(ds, **kw), 6), take(BatchIterator(ref, **kw), 6))


def test_records_are_copies():
    ids = np.array([5, 6], np.int32)
    ds = from_token_rows("sft", [{"prompt": ids, "completion": ids}], pad_id=0, max_length=4)
    ids[0] = 7
    assert ds[0]["prompt"].tolist() == [5, 6] and ds[0]["prompt"] is not ids


LOC = "grow/shard-00001.jsonl:17"
SFT = {"prompt": [1, 2], "completion": [3, 4], "reward": 0.5}
GROUP = {"prompt": [1, 2], "completions": [[3], [4, 5]], "reward": [0.5, 1.0]}

# (case, kind, bad row (after one good row of its kind), reason, message after "LOC: ")
CASES = [
    ("out_of_vocab", "sft", {**SFT, "completion": [3, 64]}, "out_of_vocab",
     "field 'completion' holds token id 64 (position 1), outside the vocabulary [0, 64): the "
     "records were probably made with another tokenizer"),
    ("negative_id", "group", {**GROUP, "completions": [[3], [-1, 5]]}, "out_of_vocab",
     "field 'completions[1]' holds token id -1 (position 0), outside the vocabulary [0, 64)"),
    ("float_ids", "sft", {**SFT, "prompt": [1.0, 2.0]}, "wrong_type",
     "field 'prompt' must hold integer token ids, got float64"),
    ("nan_column", "sft", {**SFT, "reward": math.nan}, "non_finite",
     "column 'reward' is nan, not a finite number"),
    ("inf_in_group_column", "group", {**GROUP, "reward": [0.5, math.inf]}, "non_finite",
     "column 'reward' is inf, not a finite number"),
    ("missing_column", "sft", {"prompt": [1], "completion": [2]}, "missing_field",
     "column 'reward' is missing"),
    ("null_column", "sft", {**SFT, "reward": None}, "missing_field", "column 'reward' is null"),
    ("text_column", "sft", {**SFT, "reward": "0.5"}, "wrong_type",
     "column 'reward' must be a number, got str '0.5'"),
    ("inconsistent_k", "group", {**GROUP, "completions": [[3], [4], [5]],
                                 "reward": [0.5, 1.0, 0.0]}, "group_size",
     "3 completions, but grow/shard-00001.jsonl:16 has 2"),
    ("column_k", "group", {**GROUP, "reward": [0.5]}, "group_size",
     "column 'reward' holds 1 values for 2 completions"),
    ("too_long", "sft", {**SFT, "completion": list(range(3, 10))}, "too_long",
     "9 tokens (prompt + longest completion) exceed max_length 8; rows of generated ids are "
     "never truncated"),
    ("empty_completion", "sft", {**SFT, "completion": []}, "empty_completion",
     "field 'completion' has an empty completion"),
    ("empty_group_completion", "group", {**GROUP, "completions": [[3], np.zeros(0, int)]},
     "empty_completion", "field 'completions[1]' has an empty completion"),
    ("no_completions", "group", {**GROUP, "completions": []}, "empty_completion",
     "field 'completions' holds no completions"),
    ("empty_prompt", "sft", {**SFT, "prompt": []}, "empty_prompt", "field 'prompt' is empty"),
    ("missing_field", "preference", {"prompt": [1], "chosen": [2], "reward": 0.0},
     "missing_field", "field 'rejected' is missing"),
]
GOOD = {"sft": SFT, "group": GROUP,
        "preference": {"prompt": [1], "chosen": [2], "rejected": [3], "reward": 0.0}}


@pytest.mark.parametrize("case, kind, bad, reason, message", CASES, ids=[c[0] for c in CASES])
def test_bad_row_names_its_location(case, kind, bad, reason, message):
    del case
    kw = dict(pad_id=0, max_length=8, columns={"reward": "float32"}, vocab_size=64)
    with pytest.raises(DataError) as e:
        from_token_rows(kind, [GOOD[kind], bad], locations=["grow/shard-00001.jsonl:16", LOC],
                        **kw)
    assert str(e.value).startswith(f"{LOC}: {message}"), str(e.value)
    assert e.value.location == LOC and e.value.reason == reason
    message = message.replace("grow/shard-00001.jsonl:16", "row 0")  # default locations
    with pytest.raises(DataError, match=f"^row 1: {re.escape(message)}"):
        from_token_rows(kind, [GOOD[kind], bad], **kw)
    from_token_rows(kind, [GOOD[kind]] * 2, **kw)  # the good row is good


def test_integer_columns_take_integers_in_range():
    kw = dict(pad_id=0, max_length=8, columns={"source": "int32"})
    ds = from_token_rows("sft", [{**SFT, "source": 7.0}, {**SFT, "source": np.int64(3)}], **kw)
    assert [r["source"] for r in ds] == [7, 3] and ds[0]["source"].dtype == np.int32
    for value in (1.5, 2**31):
        with pytest.raises(DataError, match=f"^row 0: column 'source' is {value}, not an "
                                            "integer that int32 holds"):
            from_token_rows("sft", [{**SFT, "source": value}], **kw)


def test_unknown_kind_and_locations():
    with pytest.raises(ValueError, match="kind must be one of"):
        from_token_rows("prompt", [], pad_id=0, max_length=8)
    with pytest.raises(ValueError, match="1 locations for 2 rows"):
        from_token_rows("sft", [SFT, SFT], pad_id=0, max_length=8, locations=["a:1"])


# ---- resume, records ----

@pytest.mark.parametrize("kind", ["sft", "group"])
@pytest.mark.parametrize("stop", [1, 3, 4, 6])  # mid-epoch, last (partial) batch, boundary
def test_resume_is_exact_with_columns(kind, stop):
    rows = group_rows(15, k=2, seed=1)
    if kind == "sft":
        rows = [{"prompt": r["prompt"], "completion": r["completions"][0],
                 "reward": r["reward"][0], "source": r["source"][0]} for r in rows]
    ds = from_token_rows(kind, rows, pad_id=0, max_length=16, columns=COLS)
    kw = dict(batch_size=4, seed=5, buckets=(8, 16))  # 4 batches per epoch, the last of 3
    reference = take(BatchIterator(ds, **kw), 9)
    assert all(b["reward"].dtype == np.float32 and b["source"].dtype == np.int32
               for b in reference)
    it = BatchIterator(ds, **kw)
    take(it, stop)
    resumed = BatchIterator(ds, **kw)
    resumed.restore(json.loads(json.dumps(it.state())))
    assert_same(take(resumed, 9 - stop), reference[stop:])


def test_write_records_refuses_columns(tmp_path):
    ds = from_token_rows("sft", [SFT], pad_id=0, max_length=8, columns={"reward": "float32"})
    with pytest.raises(ValueError, match=r"columns \['reward'\]; write_records stores token"):
        write_records(tmp_path, {"train": ds}, kind="sft", pad_id=0, max_length=8)
