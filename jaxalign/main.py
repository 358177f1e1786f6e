"""The one entry point: a config file in, the runner of its `algorithm` called.

    python -m jaxalign --config experiments/<file>.py[:arg] [--workdir DIR] \
        [--config.<key>=<value> ...] [--dry_run] \
        [--coordinator_address HOST:PORT --num_processes N --process_id I]

big_vision-style configs: the file's `get_config(arg)` returns an `ml_collections.ConfigDict`
whose `algorithm` picks the runner in `RUNNERS`. `--workdir` sets `config.workdir`;
overriding a key the config lacks is an error naming the file, section and valid keys;
`--dry_run` builds the train step abstractly and sizes memory, running nothing (for the
runners that have one). In-process: `run_config(config, dry_run=False)`.

Several processes (a TPU pod slice, GPU hosts): the same command on every host. A Cloud TPU
VM, SLURM or Open MPI launch is detected; otherwise give `--coordinator_address`,
`--num_processes` and `--process_id` (`jaxalign.distributed`). The workdir must then be one
every host sees (a `gs://` bucket or a shared filesystem); `tpu_setup/` launches on pods.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Callable, NamedTuple

from absl import app, flags, logging
from ml_collections import config_flags

from jaxalign.algorithms import (cgpo_sizing, run_cgpo, run_dpo, run_online, run_rest, run_reward,
                                 run_sppo)
from jaxalign.gym import cgpo as cgpo_gym
from jaxalign.gym import frontier, genarm
from jaxalign.gym import rest as rest_gym
from jaxalign.gym import sppo as sppo_gym


class Runner(NamedTuple):
    run: Callable  # run(config): trains / evaluates, writes under config.workdir
    dry_run: Callable | None = None  # dry_run(config): shapes and memory only, nothing runs
    no_dry_run: str = ""  # why there is no dry run, said to whoever asks for one
    one_process: str = ""  # why it runs on one process only (empty: any number of processes)


GYM = ("the gym runners train several small models on this machine; run the config's :smoke "
       "argument for a check in about a minute")
GYM_ONE = "the gym's experiments are sized for one machine"


# config.algorithm -> its runner. A new algorithm is one line here.
RUNNERS = {
    "dpo": Runner(run_dpo.run, run_dpo.dry_run),
    # GenARM's autoregressive reward model: preference pairs, loss genarm.arm, no reference
    "arm": Runner(run_dpo.run, run_dpo.dry_run),
    "rest": Runner(run_rest.run, run_rest.dry_run),  # ReST from files: policy, RM, SFT data
    "sppo": Runner(run_sppo.run, run_sppo.dry_run),  # SPPO from files: policy, RM, prompt splits
    "rloo": Runner(run_online.run, no_dry_run=(  # online RL (RLOO) from files: policy, RM, prompts
        "the RLOO runner has no abstract build yet; its :smoke config runs in about 30 s")),
    # CGPO from files: policy, reward models, judge models, one prompt file per task
    "cgpo": Runner(run_cgpo.run, cgpo_sizing.dry_run),
    "reward_bt": Runner(run_reward.run, no_dry_run=(  # a Bradley-Terry scalar reward model
        "the reward-model runner has no abstract build yet; its :smoke config trains in "
        "seconds")),
    # the gym: DPO reward-vs-KL frontier, GenARM guided decoding, ReST's Table 1, SPPO vs DPO,
    # CGPO's judges against reward hacking
    "dpo_frontier": Runner(frontier.run, no_dry_run=GYM, one_process=GYM_ONE),
    "genarm_gym": Runner(genarm.run, no_dry_run=GYM, one_process=GYM_ONE),
    "rest_gym": Runner(rest_gym.run, no_dry_run=GYM, one_process=GYM_ONE),
    "sppo_gym": Runner(sppo_gym.run, no_dry_run=GYM, one_process=GYM_ONE),
    "cgpo_gym": Runner(cgpo_gym.run, no_dry_run=GYM, one_process=GYM_ONE),  # CGPO vs RLOO
}


def run_config(config, dry_run: bool = False):
    """Checks `config.algorithm` and calls its runner (or its dry run); returns what it returns."""
    algorithm = config.get("algorithm")
    if algorithm not in RUNNERS:
        raise app.UsageError(f"config.algorithm {algorithm!r}: known {sorted(RUNNERS)}")
    if algorithm == "arm" and config.loss.name != "genarm.arm":
        raise app.UsageError(f"config.algorithm 'arm' trains with loss genarm.arm, not "
                             f"{config.loss.name!r}")
    runner = RUNNERS[algorithm]
    if not dry_run:
        import jax
        if runner.one_process and jax.process_count() > 1:
            raise app.UsageError(f"config.algorithm {algorithm!r} runs on one process "
                                 f"({runner.one_process}); this run has {jax.process_count()}")
        return runner.run(config)
    if runner.dry_run is None:
        with_dry_run = sorted(k for k, r in RUNNERS.items() if r.dry_run)
        raise app.UsageError(f"--dry_run: algorithm {algorithm!r} has no dry run: "
                             f"{runner.no_dry_run} (algorithms with one: {with_dry_run})")
    return runner.dry_run(config)


def check_overrides(argv: list[str]) -> None:
    """Every `--config.a.b=v` must name an existing key: say which file, section and keys."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    if spec is None:
        return
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_jaxalign_config", path)
    if module_spec is None:
        raise SystemExit(f"--config: cannot load {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:  # e.g. an unknown config argument: the message names the known ones
        raise SystemExit(f"--config {spec}: {e}") from None
    for a in argv:
        if not a.startswith("--config."):
            continue
        node, keys = config, a[len("--config."):].split("=", 1)[0].split(".")
        for depth, key in enumerate(keys):
            if not hasattr(node, "keys") or key not in node:
                section = ".".join(keys[:depth]) or "<top level>"
                known = sorted(node.keys()) if hasattr(node, "keys") else []
                raise SystemExit(f"{a}: config key {'.'.join(keys)!r} does not exist in {spec} "
                                 f"(section {section} has keys {known})")
            node = node[key]


def cli() -> None:
    """Defines the flags, checks the overrides, parses, sets the workdir, calls `run_config`
    holding the workdir (`io.WorkdirLock`: one run per workdir; a workdir another user could
    tamper with is refused). A run stopped by SIGTERM after its checkpoint exits with code 75
    (`trainer.EXIT_PREEMPTED`, EX_TEMPFAIL) so that a scheduler re-queues it."""
    import jax

    from jaxalign import distributed, io
    from jaxalign.train.trainer import Preempted
    config_flag = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                                  lock_config=True)
    workdir_flag = flags.DEFINE_string("workdir", None, "where checkpoints and results go")
    dry_run_flag = flags.DEFINE_bool("dry_run", False, "build shapes and size memory; run nothing")
    coordinator_flag = flags.DEFINE_string(
        "coordinator_address", None, "multi-process run: process 0's host:port (with "
        "--num_processes and --process_id; TPU pods, SLURM and Open MPI are detected instead)")
    processes_flag = flags.DEFINE_integer("num_processes", None, "multi-process run: how many")
    process_id_flag = flags.DEFINE_integer("process_id", None, "multi-process run: this one's")
    heartbeat_flag = flags.DEFINE_integer(
        "heartbeat_timeout_s", distributed.HEARTBEAT_TIMEOUT_S,
        "multi-process run: seconds before a silent peer ends the run")
    flags.mark_flag_as_required("config")
    check_overrides(sys.argv[1:])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
        try:  # first: nothing may touch a device before it
            distributed.initialize(coordinator_flag.value, processes_flag.value,
                                   process_id_flag.value, heartbeat_timeout_s=heartbeat_flag.value)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        config = config_flag.value
        if workdir_flag.value:
            with config.unlocked():
                config.workdir = workdir_flag.value
        if dry_run_flag.value or not config.get("workdir"):
            run_config(config, dry_run=dry_run_flag.value)  # (a dry run writes nothing)
            return
        try:
            lock = io.WorkdirLock(config.workdir, jax.process_index()).acquire()
        except (io.WorkdirBusy, PermissionError) as e:  # another run's, or not safely ours
            raise SystemExit(f"jaxalign: {e}") from None
        try:
            run_config(config)
        except Preempted as e:
            print(f"jaxalign: {e} (exit code {e.code})", file=sys.stderr, flush=True)
            raise
        finally:
            lock.release()

    app.run(main)
