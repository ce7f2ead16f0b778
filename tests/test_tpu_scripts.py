"""tpu_scripts/ --dry_run: every gcloud command printed, none run (no gcloud needed)."""

import os
import pathlib
import shlex
import subprocess

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "tpu_scripts"


def _dry(script, *args, **env):
  clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **env}
  proc = subprocess.run(["bash", str(SCRIPTS / script), *args, "--dry_run"], env=clean,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  # Each command is one line, quoted for bash (`printf %q`; multi-line remote scripts in
  # $'...' form, which shlex does not read): compare its words, or search it.
  return [line.split(" ") for line in proc.stdout.splitlines() if line.startswith("gcloud ")]


def test_launch_runs_the_train_command_on_every_worker():
  (cmd,) = _dry("launch.sh", "my-tpu", "runs/prompt_finetune.gin",
                "--gin.MODEL_DIR='gs://B/run'", DETACH="1", RUN="r1", ZONE="z1")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in cmd and "--zone=z1" in cmd
  remote = next(a for a in shlex.split(" ".join(cmd)) if a.startswith("--command="))
  assert "PROMPT_JAX_DISTRIBUTED=1" in remote  # Each worker joins the job first.
  assert "prompt-jax train --gin_file=runs/prompt_finetune.gin" in remote
  assert "gs://B/run" in remote and "prompt_jax_logs/r1" in remote


def test_foreground_launch_then_fetches_the_logs():
  cmds = _dry("launch.sh", "my-tpu", "runs/prompt_finetune.gin", RUN="r2")
  assert [c[4] for c in cmds] == ["ssh", "scp"]
  assert cmds[1][5] == r"my-tpu:\~/prompt_jax_logs/r2/\*.log"


@pytest.mark.parametrize("script, args, verb", [
    ("create.sh", ["my-tpu", "z2", "v4-64"], "create"),
    ("delete.sh", ["my-tpu"], "delete"),
    ("stop.sh", ["my-tpu"], "stop"),
    ("kill_stuck.sh", ["my-tpu"], "ssh"),
])
def test_each_script_prints_its_gcloud_command(script, args, verb):
  (cmd,) = _dry(script, *args, YES="1", PROJECT="p")
  assert cmd[4:6] == [verb, "my-tpu"] and "--project=p" in cmd
  if script == "create.sh":
    assert "--accelerator-type=v4-64" in cmd and "--zone=z2" in cmd


def test_setup_copies_the_tree_then_installs_on_every_worker():
  cmds = _dry("setup.sh", "my-tpu")
  assert [c[4] for c in cmds] == ["scp", "ssh"]
  assert all("--worker=all" in c for c in cmds)
