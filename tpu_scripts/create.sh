#!/usr/bin/env bash
# Creates a TPU VM (single host or pod slice).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat >&2 <<USAGE
usage: $0 NAME [ZONE] [ACCELERATOR_TYPE] [RUNTIME_VERSION] [-- extra gcloud flags]
  NAME              TPU VM name (or set TPU_NAME)
  ZONE              default: \$ZONE, now $ZONE
  ACCELERATOR_TYPE  default: \$ACCELERATOR_TYPE, now $ACCELERATOR_TYPE (v4-32: 4 workers)
  RUNTIME_VERSION   default: \$RUNTIME_VERSION, now $RUNTIME_VERSION
                    (v4: tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite)
  env: PROJECT (default: gcloud's configured project), SPOT=1 for a spot VM
example: $0 my-tpu us-central2-b v4-32
USAGE
  exit 2
}

positional=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    -h|--help) usage ;;
    *) positional+=("$1"); shift ;;
  esac
done
[[ $# -gt 0 ]] && shift  # Drop the "--"; the rest goes to gcloud.

NAME="${positional[0]:-${TPU_NAME:-}}"
[[ -n "$NAME" ]] || usage
ZONE="${positional[1]:-$ZONE}"
ACCELERATOR_TYPE="${positional[2]:-$ACCELERATOR_TYPE}"
RUNTIME_VERSION="${positional[3]:-$RUNTIME_VERSION}"
require_gcloud

flags=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
if [[ "${SPOT:-0}" == "1" ]]; then
  flags+=(--spot)
fi
echo "Creating $NAME: $ACCELERATOR_TYPE, $RUNTIME_VERSION, zone $ZONE"
tpu_vm create "$NAME" "${flags[@]}" "$@"
echo "Next: tpu_scripts/setup.sh $NAME"
