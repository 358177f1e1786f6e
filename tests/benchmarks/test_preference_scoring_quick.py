"""benchmarks/preference_scoring.py on bench-tiny (N=2, K=5, 8 + 24 tokens, 1 repetition): it
runs in-process on the test session's 8-device mesh, jaxalign's and transformers' Bradley-Terry
matrices agree, and every throughput and ratio is finite. No timing thresholds: the numbers
depend on the machine and its load."""

import importlib.util
import math
import os
import re

import jax
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--quick", "--prompts", "2", "--prompt_len", "8", "--completion_len", "24",
        "--batch", "8", "--reps", "1", "--matmul", "128"]


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "preference_scoring_benchmark", os.path.join(ROOT, "benchmarks", "preference_scoring.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preference_scoring_benchmark_tiny(capsys):
    res = load_benchmark().main(TINY)
    out = capsys.readouterr().out
    sizes = (res["config"], res["prompts"], res["samples"], res["tokens"])
    assert sizes == ("bench-tiny", 2, 5, 32)
    assert set(res["matrix_max_diff"]) == {"bs1", "prompt", "batch"}
    assert all(d < 1e-3 for d in res["matrix_max_diff"].values()), res["matrix_max_diff"]
    assert set(res["ratios"]) == {"bs1", "prompt", "batch"}
    values = [*res["ratios"].values(), *res["candidates_per_s"].values(),
              res["ceiling_candidates_per_s"]]
    assert all(math.isfinite(v) and v > 0 for v in values), res
    for name, s in res["seconds"].items():
        assert res["candidates_per_s"][name] == pytest.approx(10 / s)
    line = re.search(r"^RATIO config=bench-tiny N=2 K=5 T=32 jaxalign/bs1=(\S+) "
                     r"jaxalign/bs5=(\S+) jaxalign/bs8=(\S+)$", out, re.M)
    assert line, out
    assert float(line[1]) == pytest.approx(res["ratios"]["bs1"], rel=1e-3)
    assert f"{len(jax.devices())}-device mesh; same-matrix check" in out


@pytest.mark.parametrize("flag, value", [("--samples", "1"), ("--prompts", "0"), ("--batch", "0"),
                                         ("--completion_len", "0")],
                         ids=["one-candidate", "no-prompts", "empty-batch", "empty-completion"])
def test_preference_scoring_benchmark_rejects_bad_sizes(flag, value):
    with pytest.raises(ValueError, match=f"{flag} must be >= "):
        load_benchmark().main(["--quick", flag, value])
