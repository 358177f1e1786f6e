#!/usr/bin/env bash
# The Pallas kernels on a GPU session (the `device` tool runs this from the repository root):
# versions first, then the kernel tests compiled for the GPU (not interpreted), then the kernel
# benchmark (benchmarks/kernels.py), in under 4 minutes, as a compact table.
#
#     bash benchmarks/device.sh            # on the device machine
#
# The device image has its own jax (0.11.2, CUDA) and lacks some of the project's pure-Python
# dependencies (tensorflow-datasets, ml-collections): nothing here installs anything or imports
# more than jax, numpy, pytest and jaxalign.kernels, run from the checkout (PYTHONPATH=.).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-}"   # tests/conftest.py would default it to cpu
export JAXALIGN_PALLAS_INTERPRET=0          # kernel tests: compiled for the device's backend
export XLA_PYTHON_CLIENT_PREALLOCATE=false

python3 -c 'import sys, jax, jaxlib; print("python", sys.version.split()[0], "jax", jax.__version__,
"jaxlib", jaxlib.__version__, "devices", jax.devices())'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader

status=0
echo "== kernel tests, compiled"
if python3 -c 'import pytest' 2>/dev/null; then
  timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/kernels/test_logprobs_kernel.py tests/kernels/test_decode_attention_kernel.py \
    2>&1 | tail -15 || status=1
else
  echo "pytest is not installed here: tests skipped (the benchmark still checks values)"
fi
echo "== kernel benchmark"
timeout 150 python3 benchmarks/kernels.py --reps 10 || status=1
exit "$status"
