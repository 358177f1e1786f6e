"""Entry point: `python -m jaxalign.train --config experiments/<file>.py:<arg> [--workdir DIR]
[--config.<key>=<value> ...]` (big_vision style: the config file's get_config(arg)).

Overriding a key that the config does not have is an error (ml_collections checks it).
"""

import importlib.util
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxalign.algorithms import run_dpo

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "build shapes and size memory; run nothing")

# "arm": GenARM's autoregressive reward model, trained on preference pairs by the same runner
# (loss genarm.arm, reference "none"; see jaxalign/reward/arm.py).
RUNNERS = {"dpo": run_dpo.run, "arm": run_dpo.run}
DRY_RUNS = {"dpo": run_dpo.dry_run, "arm": run_dpo.dry_run}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    config = _CONFIG.value
    if _WORKDIR.value:
        with config.unlocked():
            config.workdir = _WORKDIR.value
    if config.algorithm not in RUNNERS:
        raise app.UsageError(f"config.algorithm {config.algorithm!r}: known {sorted(RUNNERS)}")
    if config.algorithm == "arm" and config.loss.name != "genarm.arm":
        raise app.UsageError(f"config.algorithm 'arm' trains with loss genarm.arm, not "
                             f"{config.loss.name!r}")
    if _DRY_RUN.value:
        DRY_RUNS[config.algorithm](config)
    else:
        RUNNERS[config.algorithm](config)


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


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    check_overrides(sys.argv[1:])
    app.run(main)
