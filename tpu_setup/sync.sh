#!/usr/bin/env bash
# Put the code on every worker: a tarball of the local checkout (without .venv, results, .git)
# copied with scp, or, with JAXALIGN_GIT_URL, a clone/fetch of that repository on each worker.
set -euo pipefail
SCRIPT=tpu_setup/sync.sh
REQUIRED=(TPU_NAME TPU_ZONE)
USAGE="Usage: tpu_setup/sync.sh [--help]
Copy the code to \$TPU_REPO_DIR on every worker of TPU_NAME.

Required:
  TPU_NAME          name of the TPU VM / pod slice
  TPU_ZONE          its zone
Optional:
  TPU_REPO_DIR      the code's directory on the workers (default: ~/jaxalign)
  JAXALIGN_SRC_DIR  the local checkout to copy (default: this script's repository); .venv,
                    results, .git and __pycache__ stay behind; files deleted locally stay on
                    the workers
  JAXALIGN_GIT_URL  clone this repository on every worker instead of copying the checkout
  JAXALIGN_GIT_REF  branch, tag or commit to check out (default: the remote's HEAD)"
# shellcheck source=tpu_setup/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
tpu_init "$@"
repo="$(tpu_repo_dir)"

if [[ -n "${JAXALIGN_GIT_URL:-}" ]]; then
  url="$(printf '%q' "$JAXALIGN_GIT_URL")"
  ref="$(printf '%q' "${JAXALIGN_GIT_REF:-HEAD}")"
  tpu_ssh "set -eu
[ -d $repo/.git ] || git clone --quiet $url $repo
git -C $repo fetch --quiet $url $ref
git -C $repo checkout --quiet --force --detach FETCH_HEAD
echo \"\$(hostname): \$(git -C $repo rev-parse --short HEAD)\""
  exit 0
fi

src="${JAXALIGN_SRC_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
[[ -f "$src/pyproject.toml" ]] || tpu_fail JAXALIGN_SRC_DIR "$src has no pyproject.toml"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
tarball="$tmp/jaxalign-sync.tgz"
# COPYFILE_DISABLE: no macOS ._ files in the tarball.
COPYFILE_DISABLE=1 tar -czf "$tarball" -C "$src" --exclude=./.venv --exclude=./results \
  --exclude=./.git --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache .
echo "$src -> $(du -h "$tarball" | cut -f1) tarball" >&2
tpu_gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:jaxalign-sync.tgz" "${LOCATION[@]}" \
  --worker="${TPU_WORKERS:-all}"
tpu_ssh "set -eu
mkdir -p $repo
tar -xzf \"\$HOME\"/jaxalign-sync.tgz -C $repo
rm -f \"\$HOME\"/jaxalign-sync.tgz
echo \"\$(hostname): code in $repo\""
