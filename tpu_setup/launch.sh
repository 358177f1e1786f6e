#!/usr/bin/env bash
# Start `python -m jaxalign --config ... --workdir ...` on every worker at once, detached
# (nohup), each worker logging to $TPU_LOG_DIR/<run>.worker<id>.log.
set -euo pipefail
SCRIPT=tpu_setup/launch.sh
REQUIRED=(TPU_NAME TPU_ZONE JAXALIGN_CONFIG JAXALIGN_WORKDIR)
TAKES_ARGS=1
USAGE="Usage: tpu_setup/launch.sh [--help] [more python -m jaxalign flags, e.g. --config.seed=1]
On every worker of TPU_NAME at once, detached:
  cd \$TPU_REPO_DIR && .venv/bin/python -m jaxalign --config \$JAXALIGN_CONFIG \\
      --workdir \$JAXALIGN_WORKDIR [flags] >> \$TPU_LOG_DIR/<run>.worker<id>.log
<id> is the worker's number: \$TPU_WORKER_ID if the worker's environment sets it, else the TPU
VM metadata attribute agent-worker-number (0 on a single-host TPU VM). On a pod slice
python -m jaxalign initialises jax.distributed by itself; every worker must see the workdir.

Required:
  TPU_NAME          name of the TPU VM / pod slice
  TPU_ZONE          its zone
  JAXALIGN_CONFIG   experiment config, relative to the repository, e.g.
                    experiments/sppo_ultrafeedback.py or experiments/sppo_ultrafeedback.py:gemma2_9b
  JAXALIGN_WORKDIR  run directory every worker sees: gs://bucket/path on a pod slice
Optional:
  TPU_RUN_NAME      the logs' name (default: the config's, e.g. sppo_ultrafeedback_gemma2_9b)
  TPU_LOG_DIR       log directory on the workers (default: ~/jaxalign-logs)
  TPU_REPO_DIR      the code's directory on the workers (default: ~/jaxalign)
  TPU_ENV           environment for the run, 'NAME=value ...' split on spaces, e.g.
                    'HF_HUB_OFFLINE=1 TPU_STDERR_LOG_LEVEL=0'"
# shellcheck source=tpu_setup/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
tpu_init "$@"

run="${JAXALIGN_CONFIG##*/}"
run="${run/.py:/_}"
run="${TPU_RUN_NAME:-${run%.py}}"
[[ "$run" =~ ^[A-Za-z0-9._-]+$ ]] || tpu_fail TPU_RUN_NAME "'$run' is not a name of letters, digits, . _ -"
envs=()
if [[ -n "${TPU_ENV:-}" ]]; then
  read -ra envs <<<"$TPU_ENV"
  for kv in "${envs[@]}"; do
    [[ "$kv" == [A-Za-z_]*=* ]] || tpu_fail TPU_ENV "'$kv' is not NAME=value"
  done
fi
# ${a[@]+"${a[@]}"}: an empty array under set -u in bash 3.2 (macOS) too.
cmd=(env ${envs[@]+"${envs[@]}"} .venv/bin/python -m jaxalign --config "$JAXALIGN_CONFIG"
  --workdir "$JAXALIGN_WORKDIR" "$@")
logs="$(tpu_remote_path "$(tpu_log_dir)")"
metadata=http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number
tpu_ssh "set -eu
cd $(tpu_repo_dir)
mkdir -p $logs
id=\"\${TPU_WORKER_ID:-\$(curl -sf -H 'Metadata-Flavor: Google' $metadata || hostname)}\"
log=$logs/$run.worker\$id.log
pidfile=$logs/$run.worker\$id.pid
for f in $logs/*.pid; do  # one run per TPU: the chips are not shared
  if [ -f \"\$f\" ] && grep -q jaxalign /proc/\"\$(cat \"\$f\")\"/cmdline 2>/dev/null; then
    echo \"\$(hostname): a run holds this TPU (\$f): tpu_setup/stop.sh first\" >&2
    exit 1
  fi
done
nohup $(printf '%q ' "${cmd[@]}")>> \"\$log\" 2>&1 < /dev/null &
echo \$! > \"\$pidfile\"
echo \"\$(hostname): worker \$id, pid \$!, log \$log\""
