"""The training entry point, the paper-scale dry run and DPO end to end on the toy set."""

import json
import os
import subprocess
import sys

import numpy as np

from experiments import dpo_mistral_ultrafeedback, dpo_toy
from jaxalign.algorithms import run_dpo
from jaxalign.data import toy
from jaxalign.sampling import Sampler
from jaxalign.train.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "jaxalign", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_unknown_config_key_is_an_error(tmp_path):
    out = _cli("--config", "experiments/dpo_toy.py:smoke", "--workdir", str(tmp_path),
               "--config.optim.lerning_rate=1e-3")
    assert out.returncode != 0
    assert "lerning_rate" in out.stderr and "does not exist" in out.stderr, out.stderr[-2000:]
    assert not os.path.exists(tmp_path / "checkpoints")


def test_paper_scale_config_validates_abstractly():
    report = run_dpo.dry_run(dpo_mistral_ultrafeedback.get_config())
    cfg = report["model"]
    assert (cfg.family, cfg.num_layers, cfg.rope_theta, cfg.sliding_window) == (
        "mistral", 32, 1e6, None)
    assert {"loss", "reward_accuracy", "grad_norm"} <= set(report["metrics"])
    v5e, v5p = report["estimates"]["v5e-8"], report["estimates"]["v5p-8"]
    # fp32 master params of 7.24B over 8 chips, then over 4.
    assert v5e.params == 7_241_732_096 * 4 // 8 and v5p.params == 2 * v5e.params
    assert v5e.optimizer == v5e.params  # RMSprop: one second-moment per parameter
    assert v5e.total < 16 * 2**30 and v5p.total < 95 * 2**30


def test_dpo_learns_the_toy_preference(tmp_path):
    config = dpo_toy.get_config("smoke")
    config.workdir = str(tmp_path)
    config.loop.progress_bar = False
    built, state = run_dpo.run(config)
    evals = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "eval/reward_accuracy" in r]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] == config.loop.total_steps
    print(f"held-out reward accuracy {first['eval/reward_accuracy']:.3f} -> "
          f"{last['eval/reward_accuracy']:.3f}")
    assert 0.2 <= first["eval/reward_accuracy"] <= 0.8  # a random policy: about chance
    assert last["eval/reward_accuracy"] > 0.9
    assert last["eval/reward_margin"] > first["eval/reward_margin"] + 0.5
    assert np.isfinite(last["eval/loss"]) and last["eval/loss"] < 0.5
    assert os.path.isdir(tmp_path / "checkpoints" / "best")
    # The chosen property (positive words) becomes more frequent in greedy samples.
    prompts = [json.loads(line)["prompt"] for line in open(tmp_path / "data" / "eval.jsonl")]
    sampler = Sampler(built["cfg"], built["ref_params"], built["tokenizer"], max_len=32)
    before = toy.positive_fraction(t[0] for t in sampler(prompts, max_new_tokens=8,
                                                         temperature=0.0).texts)
    sampler.set_params(state.params)
    after = toy.positive_fraction(t[0] for t in sampler(prompts, max_new_tokens=8,
                                                        temperature=0.0).texts)
    print(f"positive-word share of greedy samples {before:.2f} -> {after:.2f}")
    assert after > before + 0.3 and after > 0.8
