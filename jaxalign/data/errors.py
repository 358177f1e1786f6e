"""Bad rows: one error type that names where the row came from, and a report of skipped rows.

Every check in `jaxalign.data` raises `DataError(location, reason, message)`; its text reads
`data/train.jsonl:17: field 'chosen' is missing` (JSONL: 1-based line; Parquet and JSON
arrays: `path:row 16`, 0-based row index). A loader called with `on_error="skip"` catches
it, counts it in a `Report` by `reason` and logs a warning at the end: a row is never dropped
without being counted. A file that cannot be read at all ("unreadable_file") is never skipped.
"""

from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")

# Every reason a row can be rejected for, so reports and tests can rely on the names.
REASONS = (
    "invalid_json",  # the line is not JSON, or not a JSON object
    "invalid_utf8",  # bytes that are not UTF-8, or a lone surrogate in a string
    "missing_field",
    "wrong_type",
    "empty_completion",  # empty or whitespace-only completion
    "chosen_equals_rejected",
    "no_final_assistant",  # a messages list whose last turn is not the assistant's
    "prompt_mismatch",  # chosen and rejected disagree on the prompt
    "tokenization",  # prompt tokens are not a prefix of prompt+completion tokens
    "identical_tokens",  # chosen and rejected ids equal after tokenization / truncation
    # Rows of token ids (generated.py) and scalar columns:
    "empty_prompt",
    "out_of_vocab",  # a token id outside [0, vocab_size): made with another tokenizer?
    "too_long",  # longer than max_length (generated rows are never truncated)
    "non_finite",  # a column value that is NaN or infinite
    "group_size",  # a group record whose K differs from the dataset's
    # A whole file (corrupt gzip or Parquet, JSON that is not rows): always raised, never skipped.
    "unreadable_file",
)


class DataError(ValueError):
    """A malformed row, located as `path:line` (JSONL) or `path:row i` (Parquet)."""

    def __init__(self, location: str, reason: str, message: str):
        if reason not in REASONS:
            raise AssertionError(f"unknown reason {reason!r}")
        super().__init__(f"{location}: {message}")
        self.location = location
        self.reason = reason
        self.message = message


@dataclasses.dataclass
class Report:
    """Counts of the rows read, kept and skipped (by reason), and the first few skipped."""

    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    first: list[str] = dataclasses.field(default_factory=list)  # "path:line: message"
    max_first: int = 10

    def skip(self, err: DataError) -> None:
        self.skipped[err.reason] = self.skipped.get(err.reason, 0) + 1
        if len(self.first) < self.max_first:
            self.first.append(str(err))

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped),
                "first": list(self.first)}

    def log(self, what: str) -> None:
        if self.num_skipped:
            log.warning("%s: skipped %d of %d rows %s; first: %s", what, self.num_skipped,
                        self.read, self.skipped, self.first[:3])


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
