"""Per-device memory estimate of a training config, before anything is allocated.

Parameters and optimizer state are exact (jax.eval_shape plus the mesh's shardings; optimizer
state leaves are assumed sharded like the params they mirror, true for Adam and RMSprop).
Activations are an analytic estimate of what the backward pass keeps per micro-batch: per layer
and token, the residual input, q/k/v, attention output, MLP gate/up/product (or only the layer
input under full remat), the float32 attention probabilities, and the float32 logits and
log-softmax unless log-probs are computed from hidden states (`lean_logprobs`).

A run's phases (`PhaseMemory`): what is resident while it trains (the train step, plus copies
of the policy and other models kept beside it) and while it samples (the sampler's params, the
KV cache of a rollout batch, the reward models); `phase_table` prints them side by side and
`size_on_meshes` does so for every mesh of a config's `dry_run_meshes`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from jaxalign.models.config import ModelConfig
from jaxalign.models.sizing import abstract_mesh, param_bytes_per_device
from jaxalign.models.slices import sized_meshes
from jaxalign.models.transformer import param_shapes
from jaxalign.sharding import check_batch_rows


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    params: int
    reference: int
    optimizer: int
    gradients: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.reference + self.optimizer + self.gradients + self.activations

    def table(self, device_bytes: int | None = None) -> str:
        gib = lambda b: f"{b / 2**30:8.2f} GiB"  # noqa: E731
        rows = [(k, gib(getattr(self, k))) for k in
                ("params", "reference", "optimizer", "gradients", "activations")]
        rows.append(("total", gib(self.total)))
        if device_bytes:
            rows.append(("device HBM", gib(device_bytes)))
            rows.append(("fits", fits(self.total, device_bytes)))
        return "\n".join(f"  {k:<12}{v}" for k, v in rows)

    def phase(self, name: str = "training", **beside) -> "PhaseMemory":
        """This train step's memory as a phase, with `beside` (PhaseMemory fields: kv_cache,
        other_models, or more params / reference) added to it."""
        fields = {k: getattr(self, k) for k in
                  ("params", "reference", "optimizer", "gradients", "activations")}
        for k, v in beside.items():
            fields[k] = fields.get(k, 0) + v
        return PhaseMemory(name, **fields)


@dataclasses.dataclass(frozen=True)
class PhaseMemory:
    """Per-device bytes resident during one phase of a run ("training", "sampling")."""

    phase: str
    params: int = 0  # the policy's params: the train state's, or the sampler's, plus copies
    reference: int = 0  # a frozen reference policy
    optimizer: int = 0
    gradients: int = 0
    activations: int = 0
    kv_cache: int = 0  # the sampler's cache of a rollout batch
    other_models: int = 0  # reward / preference / ARM models resident at the time

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "phase")


COLUMNS = ("params", "reference", "optimizer", "gradients", "activations", "kv_cache",
           "other_models")


def fits(total: int, device_bytes: int | None) -> str:
    """"yes" under 90% of the device's HBM (headroom for XLA's temporaries), else "NO"; "?"
    without a device size."""
    if not device_bytes:
        return "?"
    return "yes" if total < 0.9 * device_bytes else "NO"


def phase_table(phases: Sequence[PhaseMemory | str], device_bytes: int | None = None) -> str:
    """One row per phase, GiB per device; a str is a phase this run does not have ("-")."""
    head = ("phase", *[c.replace("_", " ") for c in COLUMNS], "total", "device HBM", "fits")
    hbm = f"{device_bytes / 2**30:.2f}" if device_bytes else "-"
    rows = []
    for p in phases:
        if isinstance(p, str):
            rows.append((p, *["-"] * (len(head) - 3), hbm, "-"))
        else:
            rows.append((p.phase, *[f"{getattr(p, c) / 2**30:.2f}" for c in COLUMNS],
                         f"{p.total / 2**30:.2f}", hbm, fits(p.total, device_bytes)))
    width = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    return "\n".join("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                                       for i, (c, w) in enumerate(zip(r, width)))
                     for r in (head, *rows))


def size_on_meshes(dry_run_meshes, phases_on: Callable, *, note: str = "",
                   batch: tuple[int, int] | None = None) -> dict:
    """Sizes a run on every mesh of `dry_run_meshes` (see `models.slices.sized_mesh`) and prints
    one phase table per mesh (GiB per device). `phases_on(mesh)` -> (estimate, [PhaseMemory or
    the name of a phase the run does not have]); `note` is printed after the tables. `batch`:
    (rows, micro-batches) of a training step; a mesh they do not split over gets a line saying
    that the run would refuse it there (and `out["batch_errors"][name]`).

    Returns {"estimates": {name: estimate}, "phases": {name: [...]}, "hbm": {name: bytes or
    None}, "meshes": {name: SizedMesh}}.
    """
    out = {"estimates": {}, "phases": {}, "hbm": {}, "meshes": {}, "batch_errors": {}}
    for name, sized in sized_meshes(dry_run_meshes).items():
        mesh = abstract_mesh(**sized.axes)
        est, phases = phases_on(mesh)
        out["estimates"][name], out["phases"][name] = est, list(phases)
        out["hbm"][name], out["meshes"][name] = sized.hbm_bytes, sized
        print(f"{name} ({sized.describe()}), GiB per device:\n"
              f"{phase_table(phases, sized.hbm_bytes)}", flush=True)
        if batch is not None:
            try:
                check_batch_rows(batch[0], mesh, batch[1], "the training batch")
            except ValueError as e:
                out["batch_errors"][name] = str(e)
                print(f"  NOT RUNNABLE AS CONFIGURED on {name}: {e}", flush=True)
    if note and out["phases"]:
        print(note, flush=True)
    return out


def activation_bytes(cfg: ModelConfig, rows: int, seq_len: int, lean_logprobs: bool) -> int:
    """Bytes the backward pass keeps for `rows` sequences of `seq_len` tokens on one device."""
    act = np.dtype(cfg.dtype).itemsize
    d, f = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_kv_heads * cfg.dim_per_head
    tokens = rows * seq_len
    if cfg.remat == "full":
        per_layer = tokens * d * act
        worst = tokens * (6 * d + 2 * kv + 3 * f) * act + rows * cfg.num_heads * seq_len**2 * 4
        layers = cfg.num_layers * per_layer + worst
    else:
        per_layer = tokens * (6 * d + 2 * kv + 3 * f) * act
        per_layer += rows * cfg.num_heads * seq_len**2 * 4  # float32 attention probabilities
        layers = cfg.num_layers * per_layer
    lean = lean_logprobs or cfg.logprob_impl == "pallas"  # the fused kernel is always lean
    logits = 0 if lean else 2 * tokens * cfg.vocab_size * 4
    return int(layers + logits)


def estimate_training_memory(cfg: ModelConfig, optimizer, *, mesh=None, micro_batch: int,
                             seq_len: int, pairs: bool = True, reference_on_the_fly: bool = True,
                             lean_logprobs: bool = False, accumulate: bool = False
                             ) -> MemoryEstimate:
    """`micro_batch` examples (x2 sequences for preference pairs) split over data x fsdp.

    `accumulate`: several micro-batches per step keep an accumulator beside the micro-batch's
    own gradients (2x the gradient memory).
    """
    params = param_bytes_per_device(cfg, mesh)
    total_params = param_bytes_per_device(cfg)
    opt_shapes = jax.eval_shape(optimizer.init, param_shapes(cfg))
    opt_total = sum(int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize
                    for x in jax.tree.leaves(opt_shapes))
    optimizer_bytes = int(opt_total * params / max(total_params, 1))
    dp = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    rows = max(1, -(-micro_batch * (2 if pairs else 1) // dp))
    return MemoryEstimate(
        params=params, reference=params if reference_on_the_fly else 0,
        optimizer=optimizer_bytes, gradients=params * (2 if accumulate else 1),
        activations=activation_bytes(cfg, rows, seq_len, lean_logprobs))
