"""benchmarks/scoring.py --quick runs (tiny config): the two frameworks agree on scores and on
the prefill's last logits, and every rate, ratio and ceiling fraction is a positive number."""

import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_scoring_benchmark_quick(capsys):
    spec = importlib.util.spec_from_file_location(
        "scoring_benchmark", os.path.join(ROOT, "benchmarks", "scoring.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.main(["--quick"])
    out = capsys.readouterr().out
    assert "same-scores check" in out and "prefill same-logits check" in out
    ratios = re.findall(r"^RATIO (scoring|prefill) jaxalign/transformers=([\d.]+)x  jaxalign at "
                        r"(\d+)% of the matmul-only ceiling", out, re.M)
    assert [r[0] for r in ratios] == ["scoring", "prefill"], out
    assert all(float(r[1]) > 0 and int(r[2]) > 0 for r in ratios)
    assert res["jax_seq_s"] > 0 and res["torch_seq_s"] > 0 and res["prefill_ratio"] > 0
    assert abs(res["jax_tok_s"] - res["jax_seq_s"] * 64) < 1e-6 * res["jax_tok_s"]
    # bench-tiny (2 layers, D 64, 4 heads of 16, 2 KV heads, MLP 128) on 8 x 64 tokens, per
    # layer: 512 tokens x 2 x (64 x 64 x 2 + 64 x 32 x 2 + 64 x 128 x 3) + 4 x 8 x 64^2 x 4 x 16
    assert res["flops"] == 2 * (512 * 2 * (8192 + 4096 + 24576) + 4 * 8 * 64**2 * 4 * 16)
