"""Files -> checked examples -> token records, held in memory as a random-access dataset.

    ds, report = load_dataset("preference", "data/train.jsonl", tokenizer,
                              max_length=512, max_prompt_length=256)
    it = BatchIterator(ds, batch_size=64, seed=0)

For data too large to tokenize at every start, stream `iter_records(...)` into
`records.write_records` once and open it with `records.open_records`: it serves the same
interface (kind, pad_id, max_length, lengths, len, getitem) to `BatchIterator`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from jaxalign.data import readers
from jaxalign.data.batching import KINDS, check_column_spec
from jaxalign.data.errors import DataError, Report, check_on_error
from jaxalign.data.tokenize import Encoder, check_lengths, record_length, tokenize_example


@dataclasses.dataclass
class TokenizedDataset:
    """Records of one kind (see tokenize.py), with their lengths and where they came from.

    columns: {name: numpy dtype name} of the scalar values every record carries (a list of K
    for kind "group"), batched as batching.py says. A record missing one, or a group record
    with another K than the first, is a DataError naming its location.
    """

    kind: str
    records: list[dict]
    pad_id: int
    max_length: int  # no record is longer: the largest bucket
    locations: list[str]  # "path:line" of each record
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    lengths: np.ndarray = dataclasses.field(init=False)  # int64[N], `record_length`
    group_size: int | None = dataclasses.field(init=False, default=None)  # K of kind "group"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.locations) != len(self.records):
            raise ValueError(f"{len(self.locations)} locations for {len(self.records)} records")
        check_column_spec(self.columns)
        for r, loc in zip(self.records, self.locations):
            for name in self.columns:
                if name not in r:
                    raise DataError(loc, "missing_field", f"column {name!r} is missing")
        if self.kind == "group" and self.records:
            self.group_size = len(self.records[0]["completions"])
            for r, loc in zip(self.records, self.locations):
                check_group_size(r, loc, self.group_size, self.locations[0], self.columns)
        self.lengths = np.array([record_length(self.kind, r) for r in self.records], np.int64)
        if len(self.lengths) and self.lengths.max() > self.max_length:
            raise ValueError(f"a record of {self.lengths.max()} tokens exceeds max_length "
                             f"{self.max_length}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)


def iter_records(kind: str, paths: readers.PathLike | Iterable[readers.PathLike],
                 encoder: Encoder, *, max_length: int = 512, max_prompt_length: int = 256,
                 truncation_mode: str = "keep_end", on_error: str = "raise",
                 report: Report | None = None) -> Iterator[tuple[str, dict]]:
    """Yields (location, record) for each good row, streaming; bad rows as `read_examples`."""
    check_on_error(on_error)
    check_lengths(max_length, max_prompt_length, truncation_mode)
    report = Report() if report is None else report
    for ex in readers.read_examples(kind, paths, on_error=on_error, report=report):
        try:
            record = tokenize_example(kind, ex, encoder, max_length=max_length,
                                      max_prompt_length=max_prompt_length,
                                      truncation_mode=truncation_mode)
        except DataError as err:
            if on_error == "raise":
                raise
            report.skip(err)
            continue
        report.kept += 1
        yield ex["location"], record


def load_dataset(kind: str, paths: readers.PathLike | Iterable[readers.PathLike],
                 tokenizer: Any, *, max_length: int = 512, max_prompt_length: int = 256,
                 truncation_mode: str = "keep_end", chat: bool | None = None,
                 eos_id: int | None = None, on_error: str = "raise",
                 ) -> tuple[TokenizedDataset, Report]:
    """Reads and tokenizes every row of `kind` ("preference", "sft", "prompt").

    Defaults are the DPO reference's (max_length 512, max_prompt_length 256, keep_end).
    Prompt datasets are cut to max_prompt_length, which is then their max_length.
    on_error="skip" skips bad rows; the returned Report counts them (and logs a warning).
    """
    encoder = Encoder(tokenizer, chat=chat, eos_id=eos_id)
    report = Report()
    pairs = list(iter_records(kind, paths, encoder, max_length=max_length,
                              max_prompt_length=max_prompt_length,
                              truncation_mode=truncation_mode, on_error=on_error,
                              report=report))
    report.log(f"load_dataset({kind!r}, {paths!r})")
    ds = TokenizedDataset(kind=kind, records=[r for _, r in pairs], pad_id=encoder.pad_id,
                          max_length=max_prompt_length if kind == "prompt" else max_length,
                          locations=[loc for loc, _ in pairs])
    return ds, report


def check_group_size(record: dict, location: str, group_size: int, first: str,
                     columns: Iterable[str] = ()) -> None:
    """DataError unless the group record holds `group_size` completions (as `first` does) and
    as many values of each column."""
    k = len(record["completions"])
    if k != group_size:
        raise DataError(location, "group_size", f"{k} completions, but {first} has "
                        f"{group_size}: every record of a group dataset needs the same K")
    for name in columns:
        if np.shape(record[name]) != (k,):
            raise DataError(location, "group_size", f"column {name!r} must hold {k} values "
                            f"(one per completion), got shape {np.shape(record[name])}")
