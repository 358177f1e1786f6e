"""The one entry point: a config file in, the runner of its `algorithm` called.

    python -m jaxalign --config experiments/<file>.py[:arg] [--workdir DIR] \
        [--config.<key>=<value> ...] [--dry_run]

big_vision-style configs: the file's `get_config(arg)` returns an `ml_collections.ConfigDict`
whose `algorithm` picks the runner in `RUNNERS`. `--workdir` sets `config.workdir`;
overriding a key the config lacks is an error naming the file, section and valid keys;
`--dry_run` builds the train step abstractly and sizes memory, running nothing (for the
runners that have one). In-process: `run_config(config, dry_run=False)`.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Callable, NamedTuple

from absl import app, flags, logging
from ml_collections import config_flags

from jaxalign.algorithms import run_dpo, run_rest, run_reward
from jaxalign.gym import frontier, genarm
from jaxalign.gym import rest as rest_gym


class Runner(NamedTuple):
    run: Callable  # run(config): trains / evaluates, writes under config.workdir
    dry_run: Callable | None = None  # dry_run(config): shapes and memory only, nothing runs


# config.algorithm -> its runner. A new algorithm is one line here.
RUNNERS = {
    "dpo": Runner(run_dpo.run, run_dpo.dry_run),
    # GenARM's autoregressive reward model: preference pairs, loss genarm.arm, no reference
    "arm": Runner(run_dpo.run, run_dpo.dry_run),
    "rest": Runner(run_rest.run, run_rest.dry_run),  # ReST from files: policy, RM, SFT data
    "reward_bt": Runner(run_reward.run),  # a Bradley-Terry scalar reward model
    "dpo_frontier": Runner(frontier.run),  # the gym's DPO reward-vs-KL frontier
    "genarm_gym": Runner(genarm.run),  # the gym's GenARM guided-decoding study
    "rest_gym": Runner(rest_gym.run),  # ReST's Table 1 on the gym (BC, G1I0, G1I4, G2I3)
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
        return runner.run(config)
    if runner.dry_run is None:
        with_dry_run = sorted(k for k, r in RUNNERS.items() if r.dry_run)
        raise app.UsageError(f"--dry_run: algorithm {algorithm!r} has no dry run (algorithms "
                             f"with one: {with_dry_run})")
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
    config = module.get_config(arg) if arg else module.get_config()
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
    """Defines the flags, checks the overrides, parses, sets the workdir, calls `run_config`."""
    config_flag = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                                  lock_config=True)
    workdir_flag = flags.DEFINE_string("workdir", None, "where checkpoints and results go")
    dry_run_flag = flags.DEFINE_bool("dry_run", False, "build shapes and size memory; run nothing")
    flags.mark_flag_as_required("config")
    check_overrides(sys.argv[1:])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
        config = config_flag.value
        if workdir_flag.value:
            with config.unlocked():
                config.workdir = workdir_flag.value
        run_config(config, dry_run=dry_run_flag.value)

    app.run(main)
