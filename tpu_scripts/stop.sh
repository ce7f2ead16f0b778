#!/usr/bin/env bash
# Stops a TPU VM (keeps its disk; single-host TPU VMs only: pod slices cannot be stopped).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "usage: $0 NAME   (env: ZONE (default $ZONE), PROJECT; restart with: gcloud compute tpus tpu-vm start)" >&2
  exit 2
}

[[ $# -eq 1 && "$1" != -* ]] || usage
require_gcloud
tpu_vm stop "$1"
