#!/usr/bin/env bash
# Frees the TPU on every worker: kills the processes that hold the TPU device files (the
# leftovers of a crashed or interrupted run, which make the next run fail with "TPU in
# use") and removes libtpu's lock file.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "usage: $0 NAME   (env: ZONE (default $ZONE), PROJECT)" >&2
  exit 2
}

[[ $# -eq 1 && "$1" != -* ]] || usage
require_gcloud

# Runs remotely. Only the PIDs that hold /dev/accel* (v2-v4) or /dev/vfio/* (v5e, v6e) are
# killed, never processes picked by name.
remote=$(cat <<'REMOTE'
shopt -s nullglob
devices=(/dev/accel* /dev/vfio/[0-9]*)
if ! command -v lsof >/dev/null; then
  echo "$(hostname): lsof missing (sudo apt-get install -y lsof)" >&2
  exit 1
fi
pids=""
if [ ${#devices[@]} -gt 0 ]; then
  pids=$(sudo lsof -t -w "${devices[@]}" 2>/dev/null | sort -u | paste -sd' ' || true)
fi
if [ -n "$pids" ]; then
  echo "$(hostname): killing $pids"
  ps -o pid=,etime=,cmd= -p "$pids" | cut -c1-120 || true
  # shellcheck disable=SC2086  # $pids unquoted on purpose: one argument per PID.
  sudo kill -9 $pids || true
else
  echo "$(hostname): no process holds the TPU"
fi
sudo rm -f /tmp/libtpu_lockfile
REMOTE
)
on_all_workers "$1" "$remote"
