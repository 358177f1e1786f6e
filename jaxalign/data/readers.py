"""Rows of JSONL or Parquet files, checked and normalised into examples.

Accepted rows (a `Message` is a dict with string "role" and "content"; other keys are kept):

  preference  {"prompt": str, "chosen": str, "rejected": str}; a completion that starts with
              the prompt (HH-RLHF stores full dialogues) has it stripped. Without "prompt", the
              prompt is the text up to the last "\\n\\nAssistant:" of "chosen" (as the DPO
              reference's `extract_anthropic_prompt`), and "rejected" must start with it.
              Or chat: "chosen"/"rejected" lists of messages ending in the assistant turn;
              the earlier turns (equal in both) are the prompt, preceded by "prompt" if it is
              a list of messages; with no earlier turns, a string "prompt" becomes the user
              turn (UltraFeedback-binarized rows have all three).
  sft         {"prompt": str, "completion": str} or {"messages": [..., assistant turn]}.
  prompt      {"prompt": str | [Message]} or {"messages": [...]} (a final assistant turn is
              dropped: it is the answer, not the prompt); optional "id" (str or int),
              default: the 0-based row index in its file.

An example is a dict: "location" ("path:line"), "row" (0-based index in its file), "prompt"
(str or list of messages) and "chosen"/"rejected" or "completion" (str, or the final
assistant message), or "id". Malformed rows raise `DataError` (see errors.py).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from jaxalign.data.errors import DataError, Report, check_on_error

HH_ASSISTANT = "\n\nAssistant:"
PathLike = str | os.PathLike


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def iter_rows(path: PathLike) -> Iterator[tuple[str, int, dict | DataError]]:
    """Yields (location, row index, row) per row; an unreadable row comes as a DataError."""
    path = os.fspath(path)
    if path.endswith(".parquet"):
        yield from _parquet_rows(path)
    elif path.endswith((".jsonl", ".json", ".jsonl.gz")):
        yield from _jsonl_rows(path)
    else:
        raise ValueError(f"{path}: unknown format; expected .jsonl, .jsonl.gz, .json (read as "
                         "JSON Lines) or .parquet")


def _jsonl_rows(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    row = 0
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():  # blank lines are not rows
                continue
            loc = f"{path}:{lineno}"
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    obj = DataError(loc, "invalid_json",
                                    f"expected a JSON object, got {type(obj).__name__}")
            except UnicodeDecodeError as e:
                obj = DataError(loc, "invalid_utf8",
                                f"line is not valid UTF-8 ({e.reason} at byte {e.start})")
            except json.JSONDecodeError as e:
                obj = DataError(loc, "invalid_json", f"invalid JSON: {e.msg} (column {e.colno})")
            yield loc, row, obj
            row += 1


def _parquet_rows(path: str):
    import pyarrow.parquet as pq  # optional dependency, only for Parquet

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            yield f"{path}:row {row}", row, obj
            row += 1


# ---- field checks ----------------------------------------------------------------------------

def _get(row: dict, name: str, loc: str) -> Any:
    if row.get(name) is None:
        what = "is null" if name in row else "is missing"
        raise DataError(loc, "missing_field", f"field {name!r} {what}")
    return row[name]


def _text(value: Any, where: str, loc: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(loc, "invalid_utf8", f"{where} is not valid UTF-8 ({e.reason})")
    if not isinstance(value, str):
        raise DataError(loc, "wrong_type",
                        f"{where} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. JSON "\ud800"
        raise DataError(loc, "invalid_utf8", f"{where} is not valid UTF-8 text ({e.reason})")
    return value


def _messages(value: Any, where: str, loc: str) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(loc, "wrong_type",
                        f"{where} must be a list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(loc, "wrong_type", f"{where}[{i}] must be a message dict, "
                            f"got {type(m).__name__}")
        for key in ("role", "content"):
            if m.get(key) is None:
                raise DataError(loc, "missing_field", f"{where}[{i}] has no {key!r}")
        out.append({**m, "role": _text(m["role"], f"{where}[{i}].role", loc),
                    "content": _text(m["content"], f"{where}[{i}].content", loc)})
    return out


def _final_assistant(msgs: list[dict], where: str, loc: str) -> dict:
    if not msgs or msgs[-1]["role"] != "assistant":
        last = f"role {msgs[-1]['role']!r}" if msgs else "no messages"
        raise DataError(loc, "no_final_assistant",
                        f"{where}: the last message must be the assistant's, got {last}")
    return msgs[-1]


def _nonempty(completion: str | dict, where: str, loc: str) -> None:
    text = completion["content"] if isinstance(completion, dict) else completion
    if not text.strip():
        raise DataError(loc, "empty_completion", f"field {where!r} has an empty completion")


# ---- per-kind parsers ------------------------------------------------------------------------

def parse_preference(row: dict, loc: str) -> dict:
    chosen, rejected = _get(row, "chosen", loc), _get(row, "rejected", loc)
    prompt = row.get("prompt")
    if isinstance(chosen, list) or isinstance(rejected, list):
        c = _messages(chosen, "field 'chosen'", loc)
        r = _messages(rejected, "field 'rejected'", loc)
        c_last, r_last = _final_assistant(c, "chosen", loc), _final_assistant(r, "rejected", loc)
        if c[:-1] != r[:-1]:
            raise DataError(loc, "prompt_mismatch", "chosen and rejected have different turns "
                            "before the final assistant message")
        turns = c[:-1]
        if isinstance(prompt, list):
            turns = _messages(prompt, "field 'prompt'", loc) + turns
        elif not turns:
            turns = [{"role": "user", "content": _text(_get(row, "prompt", loc),
                                                       "field 'prompt'", loc)}]
        ex = {"prompt": turns, "chosen": c_last, "rejected": r_last}
    else:
        c, r = _text(chosen, "field 'chosen'", loc), _text(rejected, "field 'rejected'", loc)
        if prompt is None:  # HH-RLHF: the prompt is the dialogue up to the last assistant turn
            cut = c.rfind(HH_ASSISTANT)
            if cut < 0:
                raise DataError(loc, "missing_field", "field 'prompt' is missing (and 'chosen' "
                                f"has no {HH_ASSISTANT!r} turn to split it from)")
            prompt = c[:cut + len(HH_ASSISTANT)]
            if not r.startswith(prompt):
                raise DataError(loc, "prompt_mismatch",
                                "'rejected' does not start with the prompt taken from 'chosen'")
        prompt = _text(prompt, "field 'prompt'", loc)
        if prompt:
            c = c[len(prompt):] if c.startswith(prompt) else c
            r = r[len(prompt):] if r.startswith(prompt) else r
        ex = {"prompt": prompt, "chosen": c, "rejected": r}
    _nonempty(ex["chosen"], "chosen", loc)
    _nonempty(ex["rejected"], "rejected", loc)
    if ex["chosen"] == ex["rejected"]:
        raise DataError(loc, "chosen_equals_rejected", "chosen and rejected are identical")
    return ex


def parse_sft(row: dict, loc: str) -> dict:
    if "messages" in row:
        msgs = _messages(_get(row, "messages", loc), "field 'messages'", loc)
        ex = {"prompt": msgs[:-1], "completion": _final_assistant(msgs, "messages", loc)}
    else:
        ex = {"prompt": _text(_get(row, "prompt", loc), "field 'prompt'", loc),
              "completion": _text(_get(row, "completion", loc), "field 'completion'", loc)}
    _nonempty(ex["completion"], "completion", loc)
    return ex


def parse_prompt(row: dict, loc: str, row_index: int) -> dict:
    if "prompt" in row or "messages" not in row:
        prompt = _get(row, "prompt", loc)
        if isinstance(prompt, list):
            prompt = _messages(prompt, "field 'prompt'", loc)
        else:
            prompt = _text(prompt, "field 'prompt'", loc)
    else:
        prompt = _messages(_get(row, "messages", loc), "field 'messages'", loc)
        if prompt and prompt[-1]["role"] == "assistant":
            prompt = prompt[:-1]
        if not prompt:
            raise DataError(loc, "missing_field", "field 'messages' has no prompt turns")
    rid = row.get("id", row_index)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise DataError(loc, "wrong_type", f"field 'id' must be a string or int, "
                        f"got {type(rid).__name__}")
    return {"prompt": prompt, "id": str(rid)}


KINDS = ("preference", "sft", "prompt")


def read_examples(kind: str, paths: PathLike | Iterable[PathLike], *, on_error: str = "raise",
                  report: Report | None = None) -> Iterator[dict]:
    """Yields checked examples of `kind` from the files, in order (a generator: streams).

    on_error="raise" raises the first DataError; "skip" counts it in `report` and goes on.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check_on_error(on_error)
    report = Report() if report is None else report
    for path in _as_paths(paths):
        for loc, row_index, row in iter_rows(path):
            report.read += 1
            try:
                if isinstance(row, DataError):
                    raise row
                if kind == "preference":
                    ex = parse_preference(row, loc)
                elif kind == "sft":
                    ex = parse_sft(row, loc)
                else:
                    ex = parse_prompt(row, loc, row_index)
            except DataError as err:
                if on_error == "raise":
                    raise
                report.skip(err)
                continue
            yield {"location": loc, "row": row_index, **ex}
