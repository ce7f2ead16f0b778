#!/usr/bin/env bash
# Copies the per-worker logs of one run (launch.sh) from every worker to ./tpu_logs/NAME/RUN/.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "usage: $0 NAME RUN   (RUN as printed by launch.sh; env: ZONE, PROJECT)" >&2
  exit 2
}

[[ $# -eq 2 ]] || usage
NAME="$1"
RUN="$2"
require_gcloud
dest="tpu_logs/$NAME/$RUN"
mkdir -p "$dest"
# Log files are named by worker hostname, so the workers' copies do not collide.
tpu_vm scp "$NAME:~/$REMOTE_LOGS/$RUN/*.log" "$dest/" --worker=all
echo "Logs in $dest/"
