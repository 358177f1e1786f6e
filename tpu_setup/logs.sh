#!/usr/bin/env bash
# Show the end of a run's logs on every worker, follow them, or fetch them here.
set -euo pipefail
SCRIPT=tpu_setup/logs.sh
REQUIRED=(TPU_NAME TPU_ZONE TPU_RUN_NAME)
USAGE="Usage: tpu_setup/logs.sh [--help]
Print the last lines of \$TPU_LOG_DIR/\$TPU_RUN_NAME.worker*.log on every worker of TPU_NAME,
follow them (TPU_LOGS_FOLLOW=1) or copy them into a local directory (TPU_LOGS_FETCH_DIR).

Required:
  TPU_NAME            name of the TPU VM / pod slice
  TPU_ZONE            its zone
  TPU_RUN_NAME        the run's name (launch.sh prints it: the config's name by default,
                      e.g. dpo_mistral_ultrafeedback)
Optional:
  TPU_LOG_DIR         log directory on the workers (default: ~/jaxalign-logs)
  TPU_LOG_LINES       how many last lines (default: 50)
  TPU_LOGS_FOLLOW=1   keep printing new lines (tail -F) until Ctrl-C
  TPU_LOGS_FETCH_DIR  copy the logs of every worker into this local directory instead"
# shellcheck source=tpu_setup/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
tpu_init "$@"

if [[ -n "${TPU_LOGS_FETCH_DIR:-}" ]]; then
  mkdir -p "$TPU_LOGS_FETCH_DIR"
  tpu_gcloud compute tpus tpu-vm scp \
    "$TPU_NAME:$(tpu_scp_path "$(tpu_log_dir)")/$TPU_RUN_NAME.worker*.log" \
    "$TPU_LOGS_FETCH_DIR/" "${LOCATION[@]}" --worker="${TPU_WORKERS:-all}"
  exit 0
fi
lines="${TPU_LOG_LINES:-50}"
[[ "$lines" =~ ^[0-9]+$ ]] || tpu_fail TPU_LOG_LINES "'$lines' is not a number"
follow=""
if tpu_on TPU_LOGS_FOLLOW; then
  follow="-F"
fi
tpu_ssh "tail -n $lines $follow $(tpu_remote_path "$(tpu_log_dir)")/$(printf '%q' "$TPU_RUN_NAME").worker*.log"
