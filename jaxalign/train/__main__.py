"""Entry point: `python -m jaxalign.train --config experiments/<file>.py:<arg> [--workdir DIR]
[--config.<key>=<value> ...]` (big_vision style: the config file's get_config(arg)).

Overriding a key that the config does not have is an error (ml_collections checks it).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from jaxalign.algorithms import run_dpo

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go")

RUNNERS = {"dpo": run_dpo.run}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    config = _CONFIG.value
    if _WORKDIR.value:
        with config.unlocked():
            config.workdir = _WORKDIR.value
    if config.algorithm not in RUNNERS:
        raise app.UsageError(f"config.algorithm {config.algorithm!r}: known {sorted(RUNNERS)}")
    RUNNERS[config.algorithm](config)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
