"""benchmarks/sampling.py --quick runs (tiny config, batch 1), so the benchmark cannot rot."""

import importlib.util
import os


def test_quick_benchmark_runs(capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "sampling.py")
    spec = importlib.util.spec_from_file_location("sampling_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--quick"])
    assert [(r["config"], r["batch"]) for r in rows] == [("tiny", 1)]
    for key in ("ours", "hf", "matmul", "decode", "roofline"):
        assert rows[0][key] > 0
    out = capsys.readouterr().out
    assert "GB/s" in out and "ratio" in out and "decode %matmul" in out and "tiny" in out
