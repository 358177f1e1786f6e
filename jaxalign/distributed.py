"""Several processes, one run: `jax.distributed` set up by the entry point, before anything else.

    python -m jaxalign --config ... --workdir gs://bucket/run          # TPU pod: auto-detected
    python -m jaxalign --config ... --workdir /shared/run \\
        --coordinator_address host0:1234 --num_processes 2 --process_id $RANK   # GPU hosts

`initialize()` joins the processes of a run into one JAX system when it was launched on
several: explicitly (coordinator address, process count and id), or as a cluster JAX knows
(a Cloud TPU VM or pod slice, SLURM, Open MPI), whose environment gives the same. A run on one
machine (one CPU, one GPU host with all its GPUs, one TPU VM host) needs nothing and gets
nothing. After it, `jax.devices()` lists every process's devices; meshes span them all.

What each process does (the rest of jaxalign follows this): it reads only its own rows of every
batch (`BatchIterator(process_index=, process_count=)`, assembled into global arrays with
`jax.make_array_from_process_local_data`); all processes save and restore checkpoints together
(Orbax); process 0 writes metrics, summaries and records except the grow step's per-process
parts (`jaxalign.algorithms.driver`); SIGTERM on any host stops every host at the same step
with a checkpoint (`preempted`, JAX's preemption sync point: no collective per step).
Work on lists (sampling, scoring, judging) is split the same way: each process takes its
contiguous share (`process_slice`, or `process_share` topped up with fillers so that collective
calls match), and the values every process needs are gathered (`gather`, `gather_real`,
`gather_objects`) in process order.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np

# JAX's defaults wait 100 s for a silent peer and 300 s for the others to join; a launcher that
# wants a failed peer to end the run sooner passes shorter ones.
HEARTBEAT_TIMEOUT_S = 100
INITIALIZATION_TIMEOUT_S = 300


def detected_cluster() -> str | None:
    """The multi-process launcher the environment shows ("tpu", "slurm", "openmpi"), or None.
    Read from environment variables and device files only (no metadata-server query), so it is
    instant off the cloud. A single-task SLURM or MPI job counts as none."""
    env = os.environ
    if int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1) > 1 and all(
            k in env for k in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID",
                               "SLURM_STEP_NODELIST")):
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1 and "OMPI_MCA_orte_hnp_uri" in env:
        return "openmpi"
    # a Cloud TPU VM (its chips: /dev/accel*, or /dev/vfio/<n> on v5p and later); JAX's TPU
    # cluster then asks the metadata server for the workers (one, on a single-host VM)
    if glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*") or \
            env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:
        return "tpu"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               initialization_timeout_s: int = INITIALIZATION_TIMEOUT_S) -> bool:
    """Calls `jax.distributed.initialize` when this run has several processes; returns whether
    it did. Explicit arguments (all three, or none) win over cluster detection
    (`detected_cluster`). Must run before anything touches a JAX device: an error says so.
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"distributed: {', '.join('--' + k for k in missing)} not given; "
                             "a multi-process run needs --coordinator_address, "
                             "--num_processes and --process_id together")
        if ":" not in coordinator_address:
            raise ValueError(f"--coordinator_address {coordinator_address!r}: expected "
                             "host:port (process 0's host, a free port)")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id {process_id} not in [0, --num_processes "
                             f"{num_processes})")
        kw = dict(given)
    elif detected_cluster() is not None:
        kw = {}  # JAX's own cluster detection fills in all three
    else:
        return False
    try:  # a process that fails waits at most 3 heartbeats for the others before it exits
        jax.distributed.initialize(**kw, heartbeat_timeout_seconds=heartbeat_timeout_s,
                                   initialization_timeout=initialization_timeout_s,
                                   shutdown_timeout_seconds=3 * heartbeat_timeout_s)
    except ValueError as e:  # detected, but JAX finds no coordinator: say so, run alone
        if kw:
            raise
        logging.warning("jaxalign: this looks like a %s launch, but jax.distributed could not "
                        "set up from its environment (%s); running as ONE process. On a "
                        "multi-host launch give --coordinator_address, --num_processes and "
                        "--process_id.", detected_cluster(), e)
        return False
    except RuntimeError as e:
        if "before any JAX" in str(e) or "already" in str(e):
            raise RuntimeError(f"distributed: {e} (jaxalign.distributed.initialize must run "
                               "before anything touches a JAX device)") from e
        raise
    return True


def preempted(step: int, local_flag: bool) -> bool:
    """Whether to stop with a checkpoint after `step`: this process's SIGTERM flag when it runs
    alone; with several processes, JAX's preemption sync point, True on every process at the
    same step once any of them got SIGTERM (the preemption service's own handler hears it: the
    caller must not replace it). Every process must call it at every step."""
    if jax.process_count() == 1:
        return local_flag
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)


_barriers = [0]  # barriers passed: every process passes the same ones in the same order


def barrier(name: str) -> None:
    """Waits until every process reaches this barrier (nothing when one runs alone): after
    process 0 writes a file that the others read next. Every process must call the same
    barriers in the same order (each call gets the next number, so names may repeat)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        _barriers[0] += 1
        multihost_utils.sync_global_devices(f"{name}:{_barriers[0]}")


def process_rows() -> dict:
    """`BatchIterator` keywords that give this process its rows of every global batch."""
    return dict(process_index=jax.process_index(), process_count=jax.process_count())


def put_rows(batch: dict, mesh) -> dict:
    """Host arrays -> global arrays whose rows are split over the mesh's data-parallel axes
    (`jaxalign.sharding.batch_sharding`). Alone, `batch` is the whole batch; with several
    processes it is this process's rows and the global batch is every process's, in process
    order."""
    from jaxalign.sharding import batch_sharding
    if jax.process_count() == 1:
        return {k: jax.device_put(v, batch_sharding(mesh, np.ndim(v))) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)),
                                                      np.asarray(v)) for k, v in batch.items()}


def gather_rows(x):
    """Every row of a batch-sharded global array, as numpy, on every process."""
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def process_slice(n: int, what: str) -> slice:
    """This process's contiguous share of `n` items (a batch's prompts: every process's share
    in process order is the whole, in order); all of them alone. `n` must split evenly (`what`
    names it in the error)."""
    count, me = jax.process_count(), jax.process_index()
    if n % count:
        raise ValueError(f"{what} = {n} does not split over {count} processes: use a multiple "
                         f"of {count}")
    return slice(me * n // count, (me + 1) * n // count)


def process_share(items: list, filler: Callable[[int], Any]) -> tuple[list, int]:
    """This process's contiguous share of `items` and how many of it are real: every process
    gets ceil(n / processes), the last ones topped up with `filler(j)` (work every process must
    do the same number of times, e.g. a sampler's collective batches, whose results are then
    dropped). Alone: (items, len(items))."""
    count, me = jax.process_count(), jax.process_index()
    if count == 1:
        return list(items), len(items)
    per = -(-len(items) // count)
    mine = list(items[me * per:(me + 1) * per])
    return mine + [filler(j) for j in range(per - len(mine))], len(mine)


def local_rows(x) -> np.ndarray:
    """This process's rows of a row-sharded global array, in order (all of them alone): what
    `put_rows` was given, for a computed output of the same row layout."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def gather(x) -> np.ndarray:
    """Every process's rows of a host array, concatenated in process order (the shapes past the
    first axis must match; the row counts must too). Alone: `x` itself."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_real(x, n: int) -> np.ndarray:
    """Every process's first `n` rows of `x` (its real ones; `x` has as many rows on every
    process, `process_share`'s fillers past them), concatenated in process order."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[:n]
    every, counts = gather(x), gather(np.array([n], np.int64))
    rows = len(x)
    return np.concatenate([every[p * rows:p * rows + c] for p, c in enumerate(counts)])


def agree_max(values) -> np.ndarray:
    """The elementwise max of an int vector over processes (every process passes the same
    length): the shapes every process must use in a collective call. Alone: `values`."""
    v = np.asarray(values, np.int64)
    if jax.process_count() == 1:
        return v
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(v)).max(axis=0)


def gather_objects(obj) -> list:
    """Every process's `obj` (JSON-serialisable), in process order; alone, [obj]."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = gather(np.array([data.size], np.int64))
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(buf))
    return [json.loads(rows[i, :sizes[i]].tobytes()) for i in range(len(sizes))]

