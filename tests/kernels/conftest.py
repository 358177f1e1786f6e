"""The kernel tests run the Pallas kernels in Pallas' interpreter on CPU (CI). On a GPU or TPU
(`benchmarks/device.sh` sets JAXALIGN_PALLAS_INTERPRET=0) they run compiled instead, on the
device's own backend; the other backend's cases are skipped there."""

import os

import jax
import pytest

COMPILED = os.environ.get("JAXALIGN_PALLAS_INTERPRET", "1") == "0"


@pytest.fixture
def interpret_for():
    """interpret_for(backend, strict=None) -> the kernels' `interpret` option for a case of
    `backend` ("tpu" or "gpu"): `strict` (e.g. a strict `pltpu.InterpretParams`) or True when
    interpreted; False when compiled, where a case of another backend is skipped."""

    def pick(backend: str, strict=None):
        if not COMPILED:
            return True if strict is None else strict
        platform = jax.default_backend()
        platform = "gpu" if platform in ("gpu", "cuda", "rocm") else platform
        if platform != backend:
            pytest.skip(f"compiled on {platform}: the {backend} path runs on a {backend} only")
        return False

    return pick


@pytest.fixture
def lowered_text():
    """lowered_text(f, args, platform) -> the StableHLO text of jit(f) lowered for `platform`
    ("tpu" or "cuda") from this machine. jax >= 0.11 lowers Triton kernels only with a GPU
    present (it asks the device its model): there the CUDA case is skipped (a GPU session runs
    it)."""

    def lower(f, args, platform):
        try:
            return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()
        except RuntimeError as e:
            if platform == "cuda" and "No supported GPU devices" in str(e):
                pytest.skip("this jax lowers Triton kernels only with a GPU present")
            raise

    return lower
