# shellcheck shell=bash
# Settings and helpers shared by the tpu_scripts/*.sh; sourced, not run.
# Every setting is an environment variable with a default; nothing names a project.

ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
# Empty: gcloud's configured project (`gcloud config set project ...`).
PROJECT="${PROJECT:-}"
# Where the repository lands on each worker, relative to the remote home directory.
REMOTE_DIR="${REMOTE_DIR:-prompt_jax}"
REMOTE_LOGS="${REMOTE_LOGS:-prompt_jax_logs}"

# The repository root (this file's parent directory); setup.sh copies it.
# shellcheck disable=SC2034  # Used by the scripts that source this file.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# --dry_run (any position) or DRY_RUN=1: print every gcloud command instead of running it.
# (Sourced without arguments, this file sees and edits the calling script's arguments.)
DRY_RUN="${DRY_RUN:-0}"
_kept=()
for _arg in "$@"; do
  if [[ "$_arg" == "--dry_run" ]]; then DRY_RUN=1; else _kept+=("$_arg"); fi
done
set -- ${_kept[@]+"${_kept[@]}"}
unset _kept _arg
export DRY_RUN  # Scripts this one calls (launch.sh -> fetch_logs.sh) dry-run too.

die() {
  echo "error: $*" >&2
  exit 2
}

# tpu_vm VERB ARGS...: `gcloud compute tpus tpu-vm VERB ARGS` in $ZONE (and $PROJECT if set).
tpu_vm() {
  local verb="$1"
  shift
  local extra=()
  if [[ -n "$PROJECT" ]]; then
    extra+=("--project=$PROJECT")
  fi
  local cmd=(gcloud compute tpus tpu-vm "$verb" "$@" --zone="$ZONE" ${extra[@]+"${extra[@]}"})
  if [[ "$DRY_RUN" == "1" ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    return 0
  fi
  "${cmd[@]}"
}

# on_all_workers NAME COMMAND: runs COMMAND on every worker of TPU VM NAME, at once (the
# login shell there is bash on the TPU VM images).
on_all_workers() {
  tpu_vm ssh "$1" --worker=all --command="$2"
}

require_gcloud() {
  [[ "$DRY_RUN" == "1" ]] && return 0
  command -v gcloud >/dev/null 2>&1 || die "gcloud not found; install the Google Cloud CLI."
}
