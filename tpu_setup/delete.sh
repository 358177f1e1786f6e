#!/usr/bin/env bash
# Delete the TPU VM / pod slice, or the queued resource together with its TPU.
set -euo pipefail
SCRIPT=tpu_setup/delete.sh
REQUIRED=(TPU_NAME TPU_ZONE)
USAGE="Usage: tpu_setup/delete.sh [--help]
Delete TPU_NAME without asking (its disks go with it: keep results in a gs:// workdir).

Required:
  TPU_NAME         name of the TPU VM / pod slice
  TPU_ZONE         its zone
Optional:
  TPU_QUEUED=1     it was created as a queued resource: delete that (--force: its TPU too)
  TPU_QUEUED_NAME  the queued resource's id (default: \$TPU_NAME-qr)"
# shellcheck source=tpu_setup/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
tpu_init "$@"

if tpu_on TPU_QUEUED; then
  tpu_gcloud compute tpus queued-resources delete "$(tpu_queued_name)" "${LOCATION[@]}" \
    --force --quiet
else
  tpu_gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION[@]}" --quiet
fi
