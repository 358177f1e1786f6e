"""`python -m jaxalign.reward --config experiments/reward_toy.py:smoke [--workdir DIR]
[--config.<key>=<value> ...]`: Bradley-Terry reward-model training (jaxalign.reward.run)."""

from absl import app, flags, logging
from ml_collections import config_flags

from jaxalign.reward import run

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    if _WORKDIR.value:
        with config.unlocked():
            config.workdir = _WORKDIR.value
    run.run(config)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
