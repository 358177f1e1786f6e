"""benchmarks/rest_iteration.py --quick runs (bench-tiny): every phase has finite seconds,
throughputs and jaxalign/PyTorch ratios. No timing thresholds: they depend on the machine."""

import importlib.util
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_rest_iteration_benchmark_quick(capsys):
    spec = importlib.util.spec_from_file_location(
        "rest_iteration_benchmark", os.path.join(ROOT, "benchmarks", "rest_iteration.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.main(["--quick"])
    out = capsys.readouterr().out
    phases = ("grow", "score", "train")
    assert res["config"] == "bench-tiny" and sorted(res["ratios"]) == sorted(phases)
    for p in phases:
        assert f"RATIO phase={p} jaxalign/pytorch=" in out
        assert math.isfinite(res["ratios"][p]) and res["ratios"][p] > 0
        assert res["pytorch"]["tok_s"][p] > 0
        for run in ("cold", "warm"):
            assert res["jaxalign"][run]["tok_s"][p] > 0
            assert 0 < res["jaxalign"][run]["seconds"][p] < res["jaxalign"][run]["iteration"]
    assert "same reward model check" in out and res["jax_peak_flops"] > 0
