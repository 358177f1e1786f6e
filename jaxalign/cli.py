"""The shared command line of jaxalign's runners: `--config file.py[:arg] [--workdir DIR]
[--config.<key>=<value> ...]` (big_vision-style config files), then `run(config)`.

    if __name__ == "__main__":
        run_from_flags(run)       # python -m jaxalign.gym.genarm --config ... --workdir ...
"""

from __future__ import annotations

from typing import Callable


def run_from_flags(run: Callable, workdir_help: str = "where results go") -> None:
    """Defines the flags, parses them, sets config.workdir from --workdir, calls run(config)."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flag = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                                  lock_config=True)
    workdir_flag = flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flag_as_required("config")

    def main(argv):
        del argv
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
        config = config_flag.value
        if workdir_flag.value:
            with config.unlocked():
                config.workdir = workdir_flag.value
        run(config)

    app.run(main)
