"""Metrics to JSONL and TensorBoard event files (tensorboardX: no TensorFlow needed)."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from jaxalign import io


class MetricWriter:
    """`<workdir>/metrics.jsonl` rows and `<workdir>/tensorboard` scalars. A resumed run calls
    `rewind(step)` first, so that readers of either see every step once. Files are opened with
    `io.open_for_write` (a symbolic link planted at their path is refused). An inactive writer
    (`active=False`: processes other than 0 of a multi-process run) writes nothing.

    A workdir on a bucket (`gs://...`): objects cannot be appended to, so the rows are kept
    here and metrics.jsonl is written whole at each write (`io.write_atomic`); TensorBoard
    files are not written there (tensorboardX needs google-cloud-storage for gs://)."""

    def __init__(self, workdir: str, tensorboard: bool = True, active: bool = True):
        self.active = active
        if not active:
            return
        io.makedirs(workdir)
        self._path = io.join(workdir, "metrics.jsonl")
        self._rows = None  # on a bucket: every line of metrics.jsonl
        if io.is_url(workdir):
            self._jsonl = None
            self._rows = (io.read_text(self._path).splitlines(keepends=True)
                          if io.exists(self._path) else [])
        else:
            self._jsonl = io.open_for_write(self._path, "a")
        self._tb_dir = (os.path.join(workdir, "tensorboard")
                        if tensorboard and not io.is_url(workdir) else None)
        if self._tb_dir is not None:
            io.refuse_link(self._tb_dir)
        self._tb = None  # opened at the first write, after a rewind has said where to purge
        self._purge_step = None

    def rewind(self, step: int) -> None:
        """Keeps only the rows of steps <= `step` (and drops a torn last line): a run resumed
        from the checkpoint of `step` then logs every later step exactly once (`step=-1`: drop
        every row). metrics.jsonl is rewritten (`io.write_atomic`, so a kill meanwhile loses
        nothing). Event files are append-only: the next one starts with a SessionLog START
        at `step + 1`, on which TensorBoard drops the later steps that earlier files hold."""
        if not self.active:
            return
        if self._jsonl is not None:
            self._jsonl.close()
            with open(self._path) as fh:
                lines = list(fh)
        else:
            lines = self._rows
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("step", 0) <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        io.write_atomic(self._path, "".join(keep))
        if self._jsonl is not None:
            self._jsonl = io.open_for_write(self._path, "a")
        else:
            self._rows = keep
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._purge_step = step + 1

    def _tensorboard(self):
        if self._tb is None:
            from tensorboardX import SummaryWriter
            # tensorboardX names a file by the second it was opened; the suffix keeps two files
            # of one second apart (it would truncate the first) and in the order they were made
            self._tb = SummaryWriter(self._tb_dir, purge_step=self._purge_step,
                                     filename_suffix=f".{time.time_ns()}")
        return self._tb

    def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.active:
            return
        row = {f"{prefix}/{k}": float(np.asarray(v)) for k, v in metrics.items()}
        line = json.dumps({"step": int(step), **row}) + "\n"
        if self._jsonl is not None:
            self._jsonl.write(line)
            self._jsonl.flush()
        else:
            self._rows.append(line)
            io.write_atomic(self._path, "".join(self._rows))
        if self._tb_dir is not None:
            for k, v in row.items():
                self._tensorboard().add_scalar(k, v, int(step))

    def close(self) -> None:
        if not self.active:
            return
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in io.read_text(path).splitlines() if line.strip()]
