"""benchmarks/kernels.py --quick on CPU (the Pallas kernels interpreted): it runs, prints both
tables, and the kernels' values and gradients agree with the XLA references. No timing
thresholds: on CPU the kernel times are the interpreter's."""

import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_kernel_benchmark_quick(capsys):
    spec = importlib.util.spec_from_file_location(
        "kernels_benchmark", os.path.join(ROOT, "benchmarks", "kernels.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--reps", "1"])
    out = capsys.readouterr().out
    assert "jax " in out.splitlines()[0] and "interpreted" in out
    rows = {m[0]: m[1:] for m in re.findall(
        r"^(plain|xla|pallas) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.e+-]+) +([\d.e+-]+)",
        out, re.M)}
    assert set(rows) == {"plain", "xla", "pallas"}, out
    assert float(rows["pallas"][4]) < 1e-5 and float(rows["pallas"][5]) < 2e-2  # bf16 grads
    decode = re.findall(r"^(xla|pallas) +2 +[\d.]+ +[\d.]+ +[\d.]+% +([\d.e+-]+)", out, re.M)
    assert [impl for impl, _ in decode] == ["xla", "pallas"], out
    assert float(decode[1][1]) < 1e-2  # bfloat16 outputs: a few ulps
