#!/usr/bin/env bash
# Stop runs on every worker and free the TPU: SIGTERM (a run saves a checkpoint), SIGKILL
# after a grace period, then kill whatever still holds the TPU devices and remove the
# libtpu lock file a killed run leaves. Safe to run again.
set -euo pipefail
SCRIPT=tpu_setup/stop.sh
REQUIRED=(TPU_NAME TPU_ZONE)
USAGE="Usage: tpu_setup/stop.sh [--help]
On every worker of TPU_NAME: SIGTERM the runs launch.sh started (their pid files in
\$TPU_LOG_DIR), SIGKILL those still alive after TPU_STOP_GRACE seconds, kill any process
holding /dev/accel* or /dev/vfio/*, remove /tmp/libtpu_lockfile.

Required:
  TPU_NAME        name of the TPU VM / pod slice
  TPU_ZONE        its zone
Optional:
  TPU_RUN_NAME    stop only this run (default: every run launch.sh started)
  TPU_LOG_DIR     log directory on the workers (default: ~/jaxalign-logs)
  TPU_STOP_GRACE  seconds a run has to save its checkpoint and exit (default: 120)"
# shellcheck source=tpu_setup/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
tpu_init "$@"

grace="${TPU_STOP_GRACE:-120}"
[[ "$grace" =~ ^[0-9]+$ ]] || tpu_fail TPU_STOP_GRACE "'$grace' is not a number of seconds"
pids="$(tpu_remote_path "$(tpu_log_dir)")/*.pid"
if [[ -n "${TPU_RUN_NAME:-}" ]]; then
  pids="$(tpu_remote_path "$(tpu_log_dir)")/$(printf '%q' "$TPU_RUN_NAME").worker*.pid"
fi
# A pid file counts only while its process is a jaxalign run (pids get reused).
tpu_ssh "set -u
alive() { [ -f \"\$1\" ] && grep -q jaxalign /proc/\"\$(cat \"\$1\")\"/cmdline 2>/dev/null; }
for f in $pids; do
  if alive \"\$f\"; then kill -TERM \"\$(cat \"\$f\")\" && echo \"\$(hostname): SIGTERM \$f\"; fi
done
t=0
while [ \$t -lt $grace ]; do
  left=0
  for f in $pids; do if alive \"\$f\"; then left=1; fi; done
  [ \$left = 0 ] && break
  sleep 1
  t=\$((t + 1))
done
for f in $pids; do
  if alive \"\$f\"; then kill -KILL \"\$(cat \"\$f\")\" && echo \"\$(hostname): SIGKILL \$f\"; fi
  rm -f \"\$f\"
done
holders=\$(sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u || true)
if [ -n \"\$holders\" ]; then
  echo \"\$(hostname): killing TPU device holders \$holders\"
  sudo kill -KILL \$holders || true
fi
sudo rm -f /tmp/libtpu_lockfile
echo \"\$(hostname): TPU free\""
