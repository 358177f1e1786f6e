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
  cgpo_toy:smoke             tests/algorithms/test_run_cgpo.py (run_config, algorithm cgpo; it
                             also checks the cgpo_llama3_70b dry run's numbers);
                             cgpo_llama3_70b:smoke is cgpo_toy:smoke
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
            "sppo_ultrafeedback", "cgpo_llama3_70b"} <= {
        n for n, a in SIZED if a == ""}


# Sampling-phase KV cache per device, by hand, as the sampler lays it out: ceil(prompts per
# batch / data-parallel devices) x samples rows of (prompt bucket + new tokens - 1) slots, each
# row K and V of every layer plus a bool slot mask.
KV_BY_HAND = {
    # bench-tiny: 2 layers x 2 KV heads x 16 dims, float32; 16 prompts x 3 samples on 1 device;
    # slots: bucket 16 (max_prompt_length) + max_new_tokens 8 - 1
    ("sppo_ultrafeedback", "smoke", "cpu"): 16 * 3 * (2 * 2 * 2 * 16 * 23 * 4 + 23),
    # Mistral-7B: 32 layers x 8 KV heads x 128 dims, bf16; 32 prompts over 32 chips x 5 samples;
    # slots: bucket 512 + min(max_new_tokens 2048, max_length 1024 - 1) - 1
    ("sppo_ultrafeedback", "", "v5p-64"): 1 * 5 * (2 * 32 * 8 * 128 * 1534 * 2 + 1534),
    # GenARM's guided decoding, two caches (base, ARM) of Llama-2-7B: 32 layers x 32 KV heads x
    # 128 dims, bf16; 32 prompts over 32 chips x 1 sample; slots: bucket 256 + 128 new - 1
    ("genarm_hh_rlhf", "", "v5p-64"): 2 * 1 * 1 * (2 * 32 * 32 * 128 * 383 * 2 + 383),
}


@pytest.mark.parametrize("name,arg", SIZED)
def test_dry_run(name, arg, capsys):
    """The train step built abstractly (jax.eval_shape) and sized on each mesh, training and
    sampling phase (a str: the run has no such phase): seconds."""
    config = _config(name, arg)
    report = run_config(config, dry_run=True)
    assert set(report["estimates"]) == set(config.dry_run_meshes)
    assert {"loss", "grad_norm"} <= set(report["metrics"])
    loop = config.algorithm in ("sppo", "rest")  # the runners with a grow step
    for mesh, (training, sampling) in report["phases"].items():
        assert training.phase == "training"
        assert training.optimizer > 0 and training.activations > 0
        # ReST's held-out evaluation samples while the train state lives; nothing else does
        assert (training.kv_cache > 0) == (config.algorithm == "rest")
        if config.algorithm == "cgpo":  # its Trainer (optimizer state too) lives while it samples
            assert sampling.phase == "sampling" and sampling.kv_cache > 0
            assert sampling.optimizer == training.optimizer
            assert sampling.gradients == sampling.activations == 0
            assert report["estimates"][mesh].total == max(training.total, sampling.total)
            continue
        if loop or "dry_run_sampling" in config:  # a grow step, or the decoding it trains for
            assert sampling.phase == "sampling" and sampling.kv_cache > 0
            assert sampling.optimizer == sampling.gradients == sampling.activations == 0
        else:
            assert sampling == "sampling"  # reported as "-"
        if loop:
            assert report["estimates"][mesh].total == max(training.total, sampling.total)
        if config.algorithm == "arm" and "dry_run_sampling" in config:
            # GenARM's guided decoding: a base of the ARM's shapes and the ARM, a cache each
            assert sampling.other_models == sampling.params > 0
        if (name, arg, mesh) in KV_BY_HAND:
            assert sampling.kv_cache == KV_BY_HAND[name, arg, mesh]
    if (name, arg) == ("sppo_ultrafeedback", ""):
        training, sampling = report["phases"]["v5p-64"]
        policy = 7_241_732_096 * 4 // 32  # Mistral-7B's float32 params over 32 chips
        # training: pi_t (the reference) and the sampler's copy beside the train state;
        # sampling: the same two copies, no train state; the preference model in both
        assert (training.reference, training.params) == (policy, 2 * policy)
        assert sampling.params == 2 * policy and sampling.reference == 0
        assert training.other_models == sampling.other_models > 0
    out = capsys.readouterr().out
    assert out.count("  training ") == out.count("  sampling ") == len(config.dry_run_meshes)


def test_paper_configs_size_both_phases_on_v5e_8_and_v5p_64(capsys):
    """Slices named in the paper configs resolve to their chips and HBM (no run: the dry runs
    are test_dry_run's); SPPO's v5p-64 phases hold what the loop keeps at the time."""
    from jaxalign.models.slices import sized_meshes
    for name in ("dpo_mistral_ultrafeedback", "sppo_ultrafeedback", "genarm_hh_rlhf",
                 "genarm_ultrafeedback"):
        meshes = sized_meshes(_config(name, "").dry_run_meshes)
        assert (meshes["v5e-8"].axes["fsdp"], meshes["v5e-8"].hbm_bytes) == (8, 16 * 2**30)
        assert (meshes["v5p-64"].axes["fsdp"], meshes["v5p-64"].hbm_bytes) == (32, 95 * 2**30)


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
