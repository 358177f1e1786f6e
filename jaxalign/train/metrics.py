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
    `io.open_for_write` (a symbolic link planted at their path is refused)."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = io.open_for_write(self._path, "a")
        self._tb_dir = os.path.join(workdir, "tensorboard") if tensorboard else None
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
        self._jsonl.close()
        keep = []
        with open(self._path) as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if row.get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
        io.write_atomic(self._path, "".join(keep))
        self._jsonl = io.open_for_write(self._path, "a")
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
        row = {f"{prefix}/{k}": float(np.asarray(v)) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **row}) + "\n")
        self._jsonl.flush()
        if self._tb_dir is not None:
            for k, v in row.items():
                self._tensorboard().add_scalar(k, v, int(step))

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
