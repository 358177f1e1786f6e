"""Malformed rows: an error naming file and line; with on_error="skip", counted in the report."""

import json
import re

import pytest

from jaxalign.data import DataError, Report, load_dataset, read_examples
from tests.data.helpers import assistant, user, write_jsonl

GOOD = {"prompt": "Hello", "chosen": " world", "rejected": " the sea"}
U, A = user("hi there"), assistant("Hello!")

# (case, kind, bad line, reason, message after "path:line: ")
CASES = [
    ("invalid_json", "preference", '{"prompt": "Hello", "chosen": ', "invalid_json",
     "invalid JSON: Expecting value"),
    ("not_an_object", "preference", "[1, 2]", "invalid_json",
     "expected a JSON object, got list"),
    ("missing_field", "preference", {"prompt": "Hello", "rejected": " the sea"},
     "missing_field", "field 'chosen' is missing"),
    ("null_field", "preference", {**GOOD, "rejected": None}, "missing_field",
     "field 'rejected' is null"),
    ("wrong_type", "preference", {**GOOD, "chosen": 5}, "wrong_type",
     "field 'chosen' must be a string, got int"),
    ("wrong_message", "preference", {**GOOD, "chosen": [U, "Hello!"], "rejected": [U, A]},
     "wrong_type", "field 'chosen'[1] must be a message dict, got str"),
    ("empty_completion", "preference", {**GOOD, "chosen": "  \n"}, "empty_completion",
     "field 'chosen' has an empty completion"),
    ("empty_chat_completion", "preference",
     {"chosen": [U, assistant("")], "rejected": [U, A]}, "empty_completion",
     "field 'chosen' has an empty completion"),
    ("chosen_equals_rejected", "preference", {**GOOD, "rejected": " world"},
     "chosen_equals_rejected", "chosen and rejected are identical"),
    ("invalid_utf8_bytes", "preference", b'{"prompt": "Hello", "chosen": "\xff\xfe world", '
     b'"rejected": " the sea"}', "invalid_utf8", "line is not valid UTF-8"),
    ("lone_surrogate", "preference", '{"prompt": "Hello", "chosen": "\\ud800", '
     '"rejected": " the sea"}', "invalid_utf8", "field 'chosen' is not valid UTF-8 text"),
    ("no_final_assistant", "preference", {"chosen": [U, A, user("and?")], "rejected": [U, A]},
     "no_final_assistant", "chosen: the last message must be the assistant's, got role 'user'"),
    ("empty_messages", "preference", {"prompt": "x", "chosen": [], "rejected": [U, A]},
     "no_final_assistant", "chosen: the last message must be the assistant's, got no messages"),
    ("prompt_mismatch", "preference",
     {"chosen": [U, A], "rejected": [user("other"), assistant("No.")]}, "prompt_mismatch",
     "chosen and rejected have different turns"),
    ("hh_without_assistant", "preference", {"chosen": "Hi", "rejected": "Ho"},
     "missing_field", "field 'prompt' is missing"),
    ("sft_missing_completion", "sft", {"prompt": "Hello"}, "missing_field",
     "field 'completion' is missing"),
    ("sft_no_final_assistant", "sft", {"messages": [U]}, "no_final_assistant",
     "messages: the last message must be the assistant's, got role 'user'"),
    ("prompt_missing", "prompt", {"text": "Hello"}, "missing_field",
     "field 'prompt' is missing"),
    ("prompt_bad_id", "prompt", {"prompt": "Hello", "id": [1]}, "wrong_type",
     "field 'id' must be a string or int, got list"),
]
GOOD_BY_KIND = {"preference": GOOD, "sft": {"prompt": "Hello", "completion": " world"},
                "prompt": {"prompt": "Hello"}}


@pytest.mark.parametrize("case, kind, bad, reason, message", CASES, ids=[c[0] for c in CASES])
def test_bad_row(plain_tokenizer, chat_tokenizer, tmp_path, case, kind, bad, reason, message):
    good = GOOD_BY_KIND[kind]
    # Lines: 1 good, 2 blank (not a row), 3 bad, 4 good.
    path = write_jsonl(tmp_path / f"{case}.jsonl", [good, "", bad, good])
    with pytest.raises(DataError) as e:
        load_dataset(kind, path, chat_tokenizer)
    assert str(e.value).startswith(f"{path}:3: {message}"), str(e.value)
    assert e.value.reason == reason and e.value.location == f"{path}:3"
    assert isinstance(e.value, ValueError)

    ds, report = load_dataset(kind, path, chat_tokenizer, on_error="skip")
    assert len(ds) == 2 and ds.locations == [f"{path}:1", f"{path}:4"]
    assert report.skipped == {reason: 1}
    assert report.read == 3 and report.kept == 2 and report.num_skipped == 1
    assert report.first[0].startswith(f"{path}:3: {message}")
    json.dumps(report.to_dict())


def test_skip_is_logged(chat_tokenizer, tmp_path, caplog):
    path = write_jsonl(tmp_path / "x.jsonl", [GOOD, {"prompt": "x"}])
    with caplog.at_level("WARNING"):
        load_dataset("preference", path, chat_tokenizer, on_error="skip")
    assert re.search(r"skipped 1 of 2 rows .*missing_field", caplog.text)


def test_report_counts_reasons_over_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD, "oops", {**GOOD, "chosen": 1}])
    b = write_jsonl(tmp_path / "b.jsonl", ["oops", GOOD])
    report = Report()
    examples = list(read_examples("preference", [a, b], on_error="skip", report=report))
    assert [e["location"] for e in examples] == [f"{a}:1", f"{b}:2"]
    assert [e["row"] for e in examples] == [0, 1]
    assert report.skipped == {"invalid_json": 2, "wrong_type": 1} and report.read == 5
    assert report.first == [f"{a}:2: invalid JSON: Expecting value (column 1)",
                            f"{a}:3: field 'chosen' must be a string, got int",
                            f"{b}:1: invalid JSON: Expecting value (column 1)"]


def test_parquet_names_the_row(chat_tokenizer, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = str(tmp_path / "train.parquet")
    table = pa.table({"prompt": ["Hello", "Hello", "What is two plus two?"],
                      "chosen": [" world", None, " It is four."],
                      "rejected": [" the sea", " the sea", " Paris."]})
    pq.write_table(table, path)
    with pytest.raises(DataError, match=re.escape(f"{path}:row 1: field 'chosen' is null")):
        load_dataset("preference", path, chat_tokenizer)
    ds, report = load_dataset("preference", path, chat_tokenizer, on_error="skip")
    assert len(ds) == 2 and report.skipped == {"missing_field": 1}
    assert ds.locations == [f"{path}:row 0", f"{path}:row 2"]

    # Chat rows (lists of structs) read the same as from JSONL.
    path = str(tmp_path / "uf.parquet")
    pq.write_table(pa.Table.from_pylist([{"prompt": "hi there", "chosen": [U, A],
                                          "rejected": [U, assistant("No.")]}]), path)
    ds, _ = load_dataset("preference", path, chat_tokenizer)
    assert chat_tokenizer.decode(ds[0]["chosen"]) == "Hello!</s>"


def test_bad_options(chat_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [GOOD])
    with pytest.raises(ValueError, match="on_error"):
        load_dataset("preference", path, chat_tokenizer, on_error="ignore")
    with pytest.raises(ValueError, match="kind"):
        load_dataset("pairs", path, chat_tokenizer)
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset("preference", tmp_path / "x.csv", chat_tokenizer)
