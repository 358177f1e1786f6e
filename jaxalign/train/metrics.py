"""Metrics to JSONL and TensorBoard event files (tensorboardX: no TensorFlow needed)."""

from __future__ import annotations

import json
import os

import numpy as np


class MetricWriter:
    def __init__(self, workdir: str, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def rewind(self, step: int) -> None:
        """Keeps only the JSONL rows of steps <= `step` (and drops a torn last line): a run
        resumed from the checkpoint of `step` then logs every later step exactly once."""
        path = self._jsonl.name
        self._jsonl.close()
        keep = []
        with open(path) as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if row.get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
        with open(path, "w") as fh:
            fh.writelines(keep)
        self._jsonl = open(path, "a")

    def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
        row = {f"{prefix}/{k}": float(np.asarray(v)) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **row}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
