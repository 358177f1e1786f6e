"""Preference objectives (the DPO family, GenARM's ARM) and reference log-prob precomputation.

    objective = preference_objective(cfg, loss="dpo.sigmoid", loss_kwargs={"beta": 0.1},
                                     ref_params=ref_params)     # reference on the fly
    state = train(loop, objective=objective, ...)               # jaxalign.train.trainer

The objective runs chosen and rejected through the policy in one concatenated forward pass,
takes their summed log-probs with `jaxalign.models.completion_logprobs` (completion tokens
only), and applies any pairwise loss of the registry (`dpo.sigmoid`, `dpo.ipo`, `dpo.simpo`,
`genarm.arm`, ...). The reference policy is either closed over as frozen params (its forward is
wrapped in `stop_gradient` and its params are not an argument of the differentiated function)
or replaced by log-probs precomputed once (`precompute_reference_logps`) and carried in the
batch as `ref_chosen_logps` / `ref_rejected_logps` (`with_reference_logps`).
"""

from __future__ import annotations

import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import distributed, losses
from jaxalign.checksum import data_fingerprint, tree_fingerprint
from jaxalign.io import exists, is_committed, read_committed, write_committed
from jaxalign.models import completion_logprobs
from jaxalign.objectives.columns import reads

PAIR_COLUMNS = ("chosen_tokens", "chosen_mask", "chosen_loss_mask", "rejected_tokens",
                "rejected_mask", "rejected_loss_mask")
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def _pair(batch: dict):
    cat = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])  # noqa: E731
    return cat("tokens"), cat("mask"), cat("loss_mask")


def preference_objective(model_cfg, *, loss: str = "dpo.sigmoid", loss_kwargs: dict | None = None,
                         ref_params=None, lean_logprobs: bool = False, precomputed: bool = False):
    """objective(params, batch, rng) -> (loss_B, weight_B, metrics) for the train step.

    With `ref_params` the reference log-probs are computed on the fly; with `precomputed` they
    are the batch's `ref_chosen_logps` / `ref_rejected_logps` (required columns); with neither
    they are read when the batch has them, else the loss gets none (reference-free losses:
    genarm.arm, dpo.simpo, dpo.orpo, ...). A loss's own per-example inputs (SPPO's
    `chosen_win_rate`, `rejected_win_rate`, `pair_win_rate`: `loss.arrays`) are required batch
    columns of the same names.
    """
    if precomputed and ref_params is not None:
        raise ValueError("preference_objective: give ref_params (reference on the fly) or "
                         "precomputed=True (reference log-probs in the batch), not both")
    loss_fn = losses.get_loss(loss)
    loss_kwargs = dict(loss_kwargs or {})
    # the loss's own per-example inputs (SPPO's win rates) are batch columns of the same names
    arrays = tuple(a for a in getattr(loss_fn, "arrays", ()) if a not in loss_kwargs)
    required = (REFERENCE_COLUMNS if precomputed else ()) + arrays
    optional = () if ref_params is not None or precomputed else REFERENCE_COLUMNS

    @reads(*PAIR_COLUMNS, "weight", *required, optional=optional)
    def objective(params, batch, rng):
        del rng
        tokens, mask, loss_mask = _pair(batch)
        b = batch["chosen_tokens"].shape[0]
        seq = completion_logprobs(model_cfg, params, tokens, mask, loss_mask, lean=lean_logprobs)
        ref = {}
        if ref_params is not None:
            ref_seq = completion_logprobs(model_cfg, jax.lax.stop_gradient(ref_params), tokens,
                                          mask, loss_mask, lean=lean_logprobs)
            ref_logps = jax.lax.stop_gradient(ref_seq.sum)
            ref = dict(ref_chosen_logps=ref_logps[:b], ref_rejected_logps=ref_logps[b:])
        elif "ref_chosen_logps" in batch:
            ref = {k: batch[k] for k in REFERENCE_COLUMNS}
        loss_B, metrics = loss_fn(policy_chosen_logps=seq.sum[:b],
                                  policy_rejected_logps=seq.sum[b:],
                                  chosen_lengths=seq.length[:b], rejected_lengths=seq.length[b:],
                                  **ref, **{a: batch[a] for a in arrays}, **loss_kwargs)
        return loss_B, batch["weight"], metrics

    return objective


class ReferenceLogps:
    """Precomputed reference log-probs of one dataset: {row index: (chosen, rejected)} and the
    identity it was computed for ({"dataset": ..., "reference": ...} fingerprints)."""

    def __init__(self, rows: dict, identity: dict, path: str | None = None):
        self.rows, self.identity, self.path = rows, identity, path

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self):
        return self.rows.keys()

    def __getitem__(self, i: int):
        return self.rows[i]

    def lookup(self, index, real) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) [B] of the rows `index` [B]; rows where `real` is False (padding)
        get 0. A real row missing from the table is an error naming it: never a made-up value."""
        out = np.zeros((2, len(index)), np.float32)
        for j, (i, r) in enumerate(zip(np.asarray(index).tolist(), np.asarray(real).tolist())):
            if not r:
                continue
            if i not in self.rows:
                raise KeyError(f"row {i} has no precomputed reference log-probs in "
                               f"{self.path or 'the table'} ({len(self.rows)} rows, computed "
                               f"for dataset {self.identity.get('dataset', '?')[:12]}); was it "
                               f"computed for another split or dataset?")
            out[:, j] = self.rows[i]
        return out[0], out[1]


def _read_table(path: str) -> tuple[ReferenceLogps | None, str]:
    """(the table committed at `path`, "") or (None, why there is none usable)."""
    if not exists(path):
        return None, "none cached"
    if not is_committed(path):
        return None, "the cached one is incomplete (no matching .commit marker)"
    try:
        with np.load(io.BytesIO(read_committed(path)), allow_pickle=False) as data:
            identity = json.loads(str(data["identity"]))
            rows = dict(zip(data["index"].tolist(), zip(data["chosen"].tolist(),
                                                        data["rejected"].tolist())))
    except (ValueError, KeyError, OSError) as e:
        return None, f"the cached one is unreadable ({type(e).__name__}: {e})"
    return ReferenceLogps(rows, identity, path), ""


def _write_table(path: str, table: ReferenceLogps) -> None:
    idx = np.array(sorted(table.rows), np.int64)
    buf = io.BytesIO()
    np.savez(buf, index=idx, chosen=np.array([table.rows[i][0] for i in idx], np.float32),
             rejected=np.array([table.rows[i][1] for i in idx], np.float32),
             identity=np.array(json.dumps(table.identity, sort_keys=True)))
    write_committed(path, buf.getvalue())


def precompute_reference_logps(model_cfg, ref_params, batches, cache_path: str | None = None,
                               *, dataset: str | None = None, mesh=None) -> ReferenceLogps:
    """Summed reference log-probs of every real row of `batches`, cached at `cache_path`.

    Batches need `index` [B] (row index in the dataset) and the pair columns; padding rows
    (no chosen token) are skipped. With several processes each passes its own rows of every
    batch (`BatchIterator(process_index=, process_count=)`) and `mesh`; every process gets the
    whole table and process 0 writes the cache. The table records what it was computed for: `dataset` (a
    fingerprint of the rows, e.g. `jaxalign.data.dataset_fingerprint(ds)`) and the reference
    weights' `tree_fingerprint`. A cached table is reused only when both match; otherwise it is
    recomputed (saying why) and replaced.
    """
    architecture = {k: v for k, v in dataclasses.asdict(model_cfg).items()
                    if k not in ("remat", "scan_layers")}  # execution choices, same numbers
    identity = {"dataset": dataset or "", "reference": tree_fingerprint(ref_params),
                "model": data_fingerprint(json.loads(json.dumps(architecture, default=str)))}
    if cache_path:
        cached, why = _read_table(cache_path)
        if cached is not None and cached.identity == identity:
            return cached
        if cached is not None:
            changed = sorted(k for k in identity if cached.identity.get(k) != identity[k])
            why = f"the cached one was computed for another {' and '.join(changed)}"
        print(f"{cache_path}: computing reference log-probs ({why})", flush=True)

    @jax.jit
    def fwd(params, batch):  # params an argument: a closed-over 7B would be baked in as constants
        tokens, mask, loss_mask = _pair(batch)
        logps = completion_logprobs(model_cfg, params, tokens, mask, loss_mask).sum
        b = batch["chosen_tokens"].shape[0]
        return logps[:b], logps[b:]

    rows = {}
    several = jax.process_count() > 1
    if several and mesh is None:
        raise ValueError("precompute_reference_logps: several processes need the `mesh` their "
                         "rows are assembled on")
    for batch in batches:
        pair = {k: batch[k] for k in PAIR_COLUMNS}
        chosen, rejected = (distributed.gather_rows(x) for x in fwd(
            ref_params, distributed.put_rows(pair, mesh) if several else pair))
        index, real = np.asarray(batch["index"]), np.asarray(batch["chosen_mask"]).any(-1)
        if several:  # every process's rows, in the order of the global batch
            index, real = (distributed.gather_rows(distributed.put_rows({"x": a}, mesh)["x"])
                           for a in (index, real))
        for i, r, c, rj in zip(index.tolist(), real, chosen, rejected):
            if r:
                rows[int(i)] = (float(c), float(rj))
    table = ReferenceLogps(rows, identity, cache_path)
    if cache_path and jax.process_index() == 0:
        _write_table(cache_path, table)
    distributed.barrier("jaxalign_reference_logps")
    return table


def with_reference_logps(batch: dict, table: ReferenceLogps) -> dict:
    """Adds `ref_chosen_logps`/`ref_rejected_logps` [B] from a precomputed table; a real row the
    table lacks is a KeyError naming it (padding rows get 0: their weight is 0)."""
    chosen, rejected = table.lookup(batch["index"], np.asarray(batch["chosen_mask"]).any(-1))
    return {**batch, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
