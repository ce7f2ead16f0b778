#!/usr/bin/env bash
# Runs `prompt-jax train` on every worker of a TPU VM at once; one log file per worker.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat >&2 <<USAGE
usage: $0 NAME GIN_FILE [prompt-jax train flags ...]
  Runs on all workers:  prompt-jax train --gin_file=GIN_FILE [flags ...]
  GIN_FILE is a path inside the copied repository or a shipped gin file name, e.g.
    $0 my-tpu runs/prompt_finetune.gin --gin.MODEL_DIR="'gs://BUCKET/run1'"
  Each worker writes ~/$REMOTE_LOGS/RUN/<hostname>.log; in the foreground the logs are
  then copied to ./tpu_logs/NAME/RUN/ (see fetch_logs.sh for detached runs).
  env: ZONE (default $ZONE), PROJECT, RUN (default UTC time), DETACH=1 (start and return)
  --dry_run (or DRY_RUN=1): print the gcloud commands instead of running them
USAGE
  exit 2
}

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage
[[ $# -ge 2 ]] || usage
NAME="$1"
GIN_FILE="$2"
shift 2
RUN="${RUN:-$(date -u +%Y%m%d_%H%M%S)}"
require_gcloud

# Quote every argument for the remote shell.
printf -v train_cmd '%q ' prompt-jax train "--gin_file=$GIN_FILE" "$@"
logdir="\$HOME/$REMOTE_LOGS/$RUN"  # $HOME expands on the worker.
log="$logdir/\$(hostname).log"
# PROMPT_JAX_DISTRIBUTED=1: every worker joins the job (jax.distributed.initialize, the
# cluster auto-detected) before anything touches the TPU.
prefix="set -o pipefail; mkdir -p $logdir && cd ~/$REMOTE_DIR && export PATH=\"\$HOME/.local/bin:\$PATH\" PROMPT_JAX_DISTRIBUTED=1"
if [[ "${DETACH:-0}" == "1" ]]; then
  remote="$prefix && nohup $train_cmd > $log 2>&1 < /dev/null & echo \"\$(hostname): started\""
else
  remote="$prefix && $train_cmd 2>&1 | tee $log"
fi

echo "Run $RUN on $NAME: $train_cmd"
status=0
on_all_workers "$NAME" "$remote" || status=$?
if [[ "${DETACH:-0}" == "1" ]]; then
  echo "Detached. Logs: tpu_scripts/fetch_logs.sh $NAME $RUN"
  exit "$status"
fi
"$(dirname "${BASH_SOURCE[0]}")/fetch_logs.sh" "$NAME" "$RUN" || true
exit "$status"
