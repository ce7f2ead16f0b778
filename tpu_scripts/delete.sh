#!/usr/bin/env bash
# Deletes a TPU VM and its disks (asks for confirmation unless YES=1).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "usage: $0 NAME   (env: ZONE (default $ZONE), PROJECT, YES=1 to skip the prompt)" >&2
  exit 2
}

[[ $# -eq 1 && "$1" != -* ]] || usage
require_gcloud
flags=()
if [[ "${YES:-0}" == "1" ]]; then
  flags+=(--quiet)
fi
tpu_vm delete "$1" ${flags[@]+"${flags[@]}"}
