#!/usr/bin/env bash
# Install jaxalign on every worker: a venv in the code's directory, the pinned constraints and
# the tpu extra. Run tpu_setup/sync.sh first (the code must be on the workers).
set -euo pipefail
SCRIPT=tpu_setup/provision.sh
REQUIRED=(TPU_NAME TPU_ZONE)
USAGE="Usage: tpu_setup/provision.sh [--help]
On every worker of TPU_NAME: python venv at \$TPU_REPO_DIR/.venv, then
pip install -c constraints.txt -e \".[tpu]\", then gcsfs for gs:// workdirs (run
tpu_setup/sync.sh first).

Required:
  TPU_NAME      name of the TPU VM / pod slice
  TPU_ZONE      its zone
Optional:
  TPU_REPO_DIR  the code's directory on the workers (default: ~/jaxalign)
  TPU_PYTHON    the workers' Python, 3.11 or newer (default: python3; on an Ubuntu 22.04
                image: sudo apt-get install -y python3.11 python3.11-venv, TPU_PYTHON=python3.11)"
# shellcheck source=tpu_setup/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
tpu_init "$@"

python="$(printf '%q' "${TPU_PYTHON:-python3}")"
tpu_ssh "set -eu
cd $(tpu_repo_dir)
if ! $python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo \"\$(hostname): jaxalign needs Python >= 3.11, $python is older: set TPU_PYTHON\" >&2
  exit 1
fi
[ -x .venv/bin/python ] || $python -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -c constraints.txt -e '.[tpu]'
# gs:// workdirs: etils.epath reads buckets through gcsfs, whose fsspec pin differs from the
# one constraints.txt carries for the test stack (datasets caps fsspec), so it goes on its own
.venv/bin/pip install --quiet 'gcsfs==2026.10.1'
.venv/bin/python -c 'import jax, jaxalign; print(\"jax\", jax.__version__, \"installed\")'"
