# shellcheck shell=bash
# Helpers shared by tpu_setup/*.sh; sourced, never run. A script sets SCRIPT (its name),
# REQUIRED (the variables it needs), USAGE and, if it passes its arguments on, TAKES_ARGS=1,
# sources this file, then calls `tpu_init "$@"`.

# Print the calling script's usage and the variables every script reads.
tpu_usage() {
  printf '%s\n' "$USAGE"
  cat <<'EOF'

Read by every script (optional):
  TPU_PROJECT   Google Cloud project (default: gcloud's configured project)
  TPU_WORKERS   workers an ssh or scp acts on: all (default), or e.g. 0 or 0,3
  DRY_RUN=1     print the gcloud commands without running them
EOF
}

# Handle --help, then stop (exit 2, before any gcloud call) on an argument (unless the script
# sets TAKES_ARGS) or naming every unset variable of REQUIRED. Sets LOCATION, the
# --zone/--project flags of every gcloud command.
tpu_init() {
  case "${1:-}" in
    -h | --help)
      tpu_usage
      exit 0
      ;;
  esac
  if (($# > 0)) && [[ -z "${TAKES_ARGS:-}" ]]; then
    tpu_fail "$1" "unexpected argument: this script is set by environment variables (see --help)"
  fi
  local var missing=()
  for var in "${REQUIRED[@]}"; do
    [[ -n "${!var:-}" ]] || missing+=("$var")
  done
  if ((${#missing[@]})); then
    printf '%s: required variable not set: %s\n\n' "$SCRIPT" "${missing[*]}" >&2
    tpu_usage >&2
    exit 2
  fi
  tpu_on DRY_RUN || :  # stops here on a DRY_RUN other than 1 or 0
  LOCATION=(--zone="$TPU_ZONE")
  if [[ -n "${TPU_PROJECT:-}" ]]; then
    LOCATION+=(--project="$TPU_PROJECT")
  fi
}

# Stop with a message naming the variable: `tpu_fail VAR "what is wrong"`.
tpu_fail() {
  printf '%s: %s: %s\n' "$SCRIPT" "$1" "$2" >&2
  exit 2
}

# Whether the on/off variable named $1 is on: 1 is on, unset, empty or 0 is off, anything
# else stops the script naming it.
tpu_on() {
  case "${!1:-0}" in
    1) return 0 ;;
    0) return 1 ;;
    *) tpu_fail "$1" "must be 1 or 0, not '${!1}'" ;;
  esac
}

# The queued resource's id: TPU_QUEUED_NAME, default "$TPU_NAME-qr".
tpu_queued_name() {
  printf '%s' "${TPU_QUEUED_NAME:-$TPU_NAME-qr}"
}

# Print a gcloud command (shell-quoted, ready to paste) on stderr, then run it unless DRY_RUN=1.
tpu_gcloud() {
  printf '+ gcloud' >&2
  printf ' %q' "$@" >&2
  printf '\n' >&2
  if ! tpu_on DRY_RUN; then
    gcloud "$@"
  fi
}

# Run the shell command $1 on the workers (TPU_WORKERS, default all) at once.
tpu_ssh() {
  tpu_gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION[@]}" \
    --worker="${TPU_WORKERS:-all}" --command="$1"
}

# A path as one word for the workers' shell: a leading ~/ becomes "$HOME"/ (expanded there,
# not here), the rest is quoted.
tpu_remote_path() {
  # shellcheck disable=SC2016 # "$HOME" is for the workers' shell to expand
  case "$1" in
    \~) printf '"$HOME"' ;;
    \~/*) printf '"$HOME"/%q' "${1#\~/}" ;;
    *) printf '%q' "$1" ;;
  esac
}

# A worker path for scp, which reads paths relative to the home directory: ~/x becomes x.
tpu_scp_path() {
  case "$1" in
    \~/*) printf '%s' "${1#\~/}" ;;
    *) printf '%s' "$1" ;;
  esac
}

# The code's directory on the workers (TPU_REPO_DIR, default ~/jaxalign), quoted for their shell.
tpu_repo_dir() {
  tpu_remote_path "${TPU_REPO_DIR:-~/jaxalign}"
}

# The log directory on the workers (TPU_LOG_DIR, default ~/jaxalign-logs), as given.
tpu_log_dir() {
  printf '%s' "${TPU_LOG_DIR:-~/jaxalign-logs}"
}
