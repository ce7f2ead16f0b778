#!/usr/bin/env bash
# Copies this working tree to every worker (no git clone) and installs it with the TPU extra.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat >&2 <<USAGE
usage: $0 NAME
  Copies the repository (working tree, uncommitted changes included; without .git, .venv,
  build outputs) to ~/$REMOTE_DIR on all workers and runs pip install -e '.[tpu]' there.
  env: ZONE (default $ZONE), PROJECT, REMOTE_DIR
USAGE
  exit 2
}

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage
NAME="${1:-${TPU_NAME:-}}"
[[ -n "$NAME" ]] || usage
require_gcloud

tarball="$(mktemp -d)/prompt_jax_src.tar.gz"
trap 'rm -rf "$(dirname "$tarball")"' EXIT
tar -czf "$tarball" -C "$REPO_ROOT" \
  --exclude=./.git --exclude=./.venv --exclude='*.egg-info' --exclude=__pycache__ \
  --exclude=./build --exclude=./tpu_logs .
echo "Copying $(du -h "$tarball" | cut -f1) to all workers of $NAME"
tpu_vm scp "$tarball" "$NAME:~/prompt_jax_src.tar.gz" --worker=all

remote="set -euo pipefail
rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR
tar -xzf ~/prompt_jax_src.tar.gz -C ~/$REMOTE_DIR && rm ~/prompt_jax_src.tar.gz
cd ~/$REMOTE_DIR
python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e '.[tpu]'
# All workers run this at once, as a pod slice needs; a dead worker shows up as a timeout.
echo \"\$(hostname): \$(timeout 300 python3 -c 'import jax; print(jax.device_count(), \"devices,\", jax.local_device_count(), \"local\")')\""
on_all_workers "$NAME" "$remote"
echo "Next: tpu_scripts/launch.sh $NAME GIN_FILE [--gin.NAME=VALUE ...]"
