"""benchmarks/scoring.py --quick runs (tiny config), and the two frameworks agree on scores."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_scoring_benchmark_quick(capsys):
    spec = importlib.util.spec_from_file_location(
        "scoring_benchmark", os.path.join(ROOT, "benchmarks", "scoring.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.main(["--quick"])
    out = capsys.readouterr().out
    assert "RATIO config=bench-tiny" in out and "same-scores check" in out
    assert res["jax_seq_s"] > 0 and res["torch_seq_s"] > 0
    assert abs(res["jax_tok_s"] - res["jax_seq_s"] * 64) < 1e-6 * res["jax_tok_s"]
