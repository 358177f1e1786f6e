"""`python -m jaxalign.reward --config experiments/reward_toy.py:smoke [--workdir DIR]
[--config.<key>=<value> ...]`: Bradley-Terry reward-model training (jaxalign.reward.run)."""

from jaxalign.cli import run_from_flags
from jaxalign.reward import run

if __name__ == "__main__":
    run_from_flags(run.run, "where checkpoints and metrics go")
