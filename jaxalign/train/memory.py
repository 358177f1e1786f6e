"""Per-device memory estimate of a training config, before anything is allocated.

Parameters and optimizer state are exact (jax.eval_shape plus the mesh's shardings; optimizer
state leaves are assumed sharded like the params they mirror, true for Adam and RMSprop).
Activations are an analytic estimate of what the backward pass keeps per micro-batch: per layer
and token, the residual input, q/k/v, attention output, MLP gate/up/product (or only the layer
input under full remat), the float32 attention probabilities, and the float32 logits and
log-softmax unless log-probs are computed from hidden states (`lean_logprobs`).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxalign.models.config import ModelConfig
from jaxalign.models.sizing import param_bytes_per_device
from jaxalign.models.transformer import param_shapes


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
            rows.append(("fits", "yes" if self.total < 0.9 * device_bytes else "NO"))
        return "\n".join(f"  {k:<12}{v}" for k, v in rows)


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
