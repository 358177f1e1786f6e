"""Rows of JSONL, JSON or Parquet files, checked and normalised into examples.

Files: .jsonl and .jsonl.gz are JSON Lines; .json is JSON Lines or one JSON array of row
objects; .parquet rows are its records. A file that cannot be read as rows at all (missing,
corrupt or truncated gzip or Parquet, JSON that is not rows) is an error naming it, whatever
`on_error` says: only single rows are ever skipped.

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

An example is a dict: "location" ("path:line"; "path:row i" for Parquet and JSON arrays),
"row" (0-based index in its file), "prompt" (str or list of messages) and "chosen"/"rejected"
or "completion" (str, or the final assistant message), or "id". Malformed rows raise
`DataError` (see errors.py).
"""

from __future__ import annotations

import gzip
import io as stdio
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from jaxalign import io
from jaxalign.data.errors import DataError, Report, check_on_error

HH_ASSISTANT = "\n\nAssistant:"
PathLike = str | os.PathLike


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


FORMATS = (".jsonl", ".jsonl.gz", ".json", ".parquet")


def _open(path: str, mode: str = "rb"):
    """A local file opened for reading, or a bucket object's bytes (`gs://...`) in memory."""
    if io.is_url(path):
        return stdio.BytesIO(io.read_bytes(path))
    return open(path, mode)


def check_file(path: PathLike) -> str:
    """`path` as a str, after checking it names an existing file of a known format."""
    path = os.fspath(path)
    if not path.endswith(FORMATS):
        raise ValueError(f"{path}: unknown format; expected .jsonl, .jsonl.gz, .json (JSON Lines "
                         "or one JSON array of objects) or .parquet")
    if io.is_url(path):  # a bucket (gs://...): read through etils.epath
        if not io.exists(path) or io.isdir(path):
            raise FileNotFoundError(f"{path}: data file not found")
        return path
    if not os.path.isfile(path):
        what = "is a directory, not a file" if os.path.isdir(path) else "no such file"
        raise FileNotFoundError(f"{path}: data file not found ({what})")
    return path


def iter_rows(path: PathLike) -> Iterator[tuple[str, int, dict | DataError]]:
    """Yields (location, row index, row) per row; an unreadable row comes as a DataError.

    A file that cannot be read as rows at all (corrupt or truncated gzip or Parquet, a JSON
    document that is not rows) raises DataError "unreadable_file" naming it, whatever on_error.
    """
    path = check_file(path)
    if path.endswith(".parquet"):
        yield from _parquet_rows(path)
    elif path.endswith(".json"):
        yield from _json_rows(path)
    else:
        yield from _jsonl_rows(path)


def _jsonl_rows(path: str):
    gz = path.endswith(".gz")
    opener = (lambda p, mode: gzip.open(_open(p, mode))) if gz else _open
    row, lineno = 0, 0
    try:
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
                    obj = DataError(loc, "invalid_json",
                                    f"invalid JSON: {e.msg} (column {e.colno})")
                yield loc, row, obj
                row += 1
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        where = f"{path}:{lineno + 1}" if lineno else path
        what = "corrupt or truncated gzip data" if gz else "cannot read it"
        after = f" after line {lineno}" if lineno else ""
        raise DataError(where, "unreadable_file",
                        f"{what}{after} ({type(e).__name__}: {e})") from e


def _json_rows(path: str):
    """A .json file: one JSON array of row objects ("path:row i"), else JSON Lines."""
    with _open(path, "rb") as f:
        first = next((line for line in f if line.strip()), b"").strip()
    if first[:1] == b"{" and _invalid_json(first) and isinstance(_parse(path, False), dict):
        raise DataError(path, "unreadable_file", "holds one JSON object spanning several "
                        "lines, not rows: expected JSON Lines (one object per line) or a JSON "
                        "array of row objects")
    if first[:1] != b"[":
        yield from _jsonl_rows(path)
        return
    for i, obj in enumerate(_parse(path, True)):
        loc = f"{path}:row {i}"
        if not isinstance(obj, dict):
            obj = DataError(loc, "invalid_json",
                            f"expected a JSON object, got {type(obj).__name__}")
        yield loc, i, obj


def _invalid_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return True
    return False


def _parse(path: str, strict: bool):
    """The whole file as one JSON document; if invalid, a DataError (strict) or None."""
    try:
        with _open(path, "rb") as f:
            return json.loads(f.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        if not strict:
            return None
        where = f"{path}:{e.lineno}" if isinstance(e, json.JSONDecodeError) else path
        raise DataError(where, "unreadable_file", f"a JSON array that is not valid JSON "
                        f"({e})") from e


def _parquet_rows(path: str):
    import pyarrow as pa  # optional dependency, only for Parquet
    import pyarrow.parquet as pq

    row = 0
    try:
        batches = pq.ParquetFile(_open(path, "rb")).iter_batches(batch_size=1024)
        for batch in batches:
            for obj in batch.to_pylist():
                yield f"{path}:row {row}", row, obj
                row += 1
    except (pa.ArrowException, OSError) as e:
        where, what = (f"{path}:row {row}", "damaged Parquet data") if row else (
            path, "not a Parquet file, or a damaged one")
        raise DataError(where, "unreadable_file", f"{what} ({type(e).__name__}: "
                        f"{str(e).strip()})") from e


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
    paths = [check_file(p) for p in _as_paths(paths)]  # every file, before reading the first
    for path in paths:
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
