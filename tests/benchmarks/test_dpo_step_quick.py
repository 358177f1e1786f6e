"""Smoke test of benchmarks/dpo_step.py --quick: it runs and reports finite throughputs.

No timing thresholds: the numbers depend on the machine and its load.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
NUM = r"([-+0-9.eE]+|nan|inf)"
RATIO_LINE = re.compile(
    rf"^RATIO config=(\S+) jaxalign_tok_s={NUM} trl_tok_s={NUM} ratio={NUM} "
    rf"jaxalign_mfu={NUM} trl_mfu={NUM}$", re.M)


def test_quick_mode_prints_a_ratio_line():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # The test session's conftest asks for 8 fake CPU devices; the benchmark wants the real one.
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dpo_step.py"), "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    matches = RATIO_LINE.findall(proc.stdout)
    assert [m[0] for m in matches] == ["bench-tiny"], proc.stdout[-3000:]
    values = [float(x) for x in matches[0][1:]]
    jax_tok, trl_tok, ratio, jax_mfu, trl_mfu = values
    assert all(math.isfinite(v) and v > 0 for v in values), values
    assert ratio == pytest.approx(jax_tok / trl_tok, rel=2e-3)
    assert "same model check" in proc.stdout
