"""benchmarks/guided_decoding.py --quick runs (tiny models, every row), so it cannot rot."""

import importlib.util
import math
import os


def test_quick_guided_decoding_benchmark_runs(capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                        "guided_decoding.py")
    spec = importlib.util.spec_from_file_location("guided_decoding_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--quick"])
    assert set(result["seconds"]) == {"base", "base + 1 ARM (fused)", "base + 2 ARMs (fused)",
                                      "ARGS k=10 (scalar RM)", "ARM step alone"}
    # Differences of tiny timings may be ~0 or negative: finite is all that is asked here.
    assert all(math.isfinite(s) for s in result["seconds"].values())
    assert math.isfinite(result["fused_ratio"]) and math.isfinite(result["args_ratio"])
    out = capsys.readouterr().out
    assert "fused(1 ARM) / (base step + ARM step)" in out and "ARGS / base" in out
    assert "load average" in out
