#!/usr/bin/env bash
# Create a TPU VM or pod slice, directly or through a queued resource; spot or preemptible.
set -euo pipefail
SCRIPT=tpu_setup/create.sh
REQUIRED=(TPU_NAME TPU_ZONE TPU_TYPE TPU_RUNTIME)
USAGE="Usage: tpu_setup/create.sh [--help]
Create the TPU VM or pod slice TPU_NAME (every host of a slice is one worker).

Required:
  TPU_NAME      name of the TPU VM / pod slice (the node id of a queued resource)
  TPU_ZONE      zone, e.g. us-west4-a (v5e) or us-east5-a (v5p): one with your quota
  TPU_TYPE      accelerator type, e.g. v5litepod-8 (8 chips, 1 host), v5p-64 (32 chips, 8 hosts)
  TPU_RUNTIME   runtime version, e.g. v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 (v5p)
Optional:
  TPU_QUEUED=1       request it as a queued resource (waits for capacity; best practice)
  TPU_QUEUED_NAME    the queued resource's id (default: \$TPU_NAME-qr)
  TPU_SPOT=1         a Spot TPU (cheaper, preemptible at any time, no runtime limit)
  TPU_PREEMPTIBLE=1  a preemptible TPU (24 h limit; not with TPU_QUEUED=1: use TPU_SPOT=1)
  TPU_CREATE_FLAGS   more gcloud flags, split on spaces, e.g. '--network=x --reserved'"
# shellcheck source=tpu_setup/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
tpu_init "$@"

flags=("${LOCATION[@]}" --accelerator-type="$TPU_TYPE")
if tpu_on TPU_SPOT; then
  if tpu_on TPU_PREEMPTIBLE; then
    tpu_fail TPU_PREEMPTIBLE "choose one of TPU_SPOT=1 and TPU_PREEMPTIBLE=1"
  fi
  flags+=(--spot)
fi
if [[ -n "${TPU_CREATE_FLAGS:-}" ]]; then
  read -ra extra <<<"$TPU_CREATE_FLAGS"
  flags+=("${extra[@]}")
fi

if tpu_on TPU_QUEUED; then
  if tpu_on TPU_PREEMPTIBLE; then
    tpu_fail TPU_PREEMPTIBLE "queued resources have no preemptible form: use TPU_SPOT=1"
  fi
  qr="$(tpu_queued_name)"
  tpu_gcloud compute tpus queued-resources create "$qr" --node-id="$TPU_NAME" \
    --runtime-version="$TPU_RUNTIME" "${flags[@]}"
  echo "Queued. The TPU exists once the state is ACTIVE:" >&2
  echo "  gcloud compute tpus queued-resources describe $qr ${LOCATION[*]}" >&2
else
  if tpu_on TPU_PREEMPTIBLE; then
    flags+=(--preemptible)
  fi
  tpu_gcloud compute tpus tpu-vm create "$TPU_NAME" --version="$TPU_RUNTIME" "${flags[@]}"
fi
