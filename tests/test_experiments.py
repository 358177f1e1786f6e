"""Every experiment config loads, names a known algorithm, and (at paper scale) dry-runs.

    .venv/bin/python -m pytest tests/test_experiments.py -q      # ~10 s on 2 CPU cores

Files are globbed, so a new experiment is covered without editing this test. The smoke
variants are trained by other tests (no second run here):
  dpo_toy:smoke              tests/train/test_entry_and_dpo.py (test_dpo_learns_the_toy_preference;
                             the CLI override check) and tests/train/test_lora.py (runner)
  reward_toy:smoke           tests/reward/test_model_train.py (run_config, algorithm reward_bt)
  dpo_frontier:smoke         tests/gym/test_frontier.py (run_config, algorithm dpo_frontier)
  genarm_gym:smoke           tests/gym/test_genarm.py (run_config, algorithm genarm_gym)
  rest_llama3_8b:smoke       tests/algorithms/test_rest_files.py (run_config, algorithm rest;
                             it also checks the paper config's dry run numbers)
  sppo_ultrafeedback:smoke   tests/algorithms/test_sppo_files.py (run_config, algorithm sppo;
                             it also dry-runs the :llama3_8b and :gemma2_9b configs)
  sppo_gym:smoke             not run by a test: tests/gym/test_sppo.py runs its loop
                             (run_sppo on the gym's oracle) in process at a smaller size
  dpo_mistral_ultrafeedback:smoke, genarm_hh_rlhf:smoke, genarm_ultrafeedback:smoke
                             no test trains them (their runner, run_dpo, is the one
                             dpo_toy:smoke trains); they are dry-run below
"""

import glob
import importlib
import os

import pytest

from jaxalign.main import RUNNERS, run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{ROOT}/experiments/*.py")
               if not p.endswith("__init__.py"))


def _config(name: str, arg: str):
    return importlib.import_module(f"experiments.{name}").get_config(arg)


# (file, arg) of every variant that has `dry_run_meshes` (paper-scale slices, or a CPU mesh)
SIZED = [(n, a) for n in NAMES for a in ("", "smoke") if "dry_run_meshes" in _config(n, a)]


def test_experiments_are_found():
    assert {"dpo_toy", "dpo_frontier", "reward_toy", "genarm_gym"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arg", ["", "smoke"])
def test_config_loads_and_names_a_runner(name, arg):
    config = _config(name, arg)
    assert config.get("algorithm") in RUNNERS, (name, config.get("algorithm"), sorted(RUNNERS))
    assert config.get("workdir"), name
    if "dry_run_meshes" in config:
        assert RUNNERS[config.algorithm].dry_run is not None, name


def test_paper_scale_configs_are_sized():
    assert {"dpo_mistral_ultrafeedback", "genarm_hh_rlhf", "rest_llama3_8b",
            "sppo_ultrafeedback"} <= {
        n for n, a in SIZED if a == ""}


@pytest.mark.parametrize("name,arg", SIZED)
def test_dry_run(name, arg):
    """The train step built abstractly (jax.eval_shape) and sized on each mesh: seconds."""
    config = _config(name, arg)
    report = run_config(config, dry_run=True)
    assert set(report["estimates"]) == set(config.dry_run_meshes)
    assert {"loss", "grad_norm"} <= set(report["metrics"])


def test_run_config_refuses_before_running():
    from absl import app
    with pytest.raises(app.UsageError, match="'dpo_frontier' has no dry run"):
        run_config(_config("dpo_frontier", "smoke"), dry_run=True)
    config = _config("genarm_hh_rlhf", "smoke")
    config.loss.name = "dpo.sigmoid"
    with pytest.raises(app.UsageError, match="'arm' trains with loss genarm.arm"):
        run_config(config)
    config.algorithm = "ppo"
    with pytest.raises(app.UsageError, match=r"'ppo': known \['arm', "):
        run_config(config)
