"""Faults during a run: divergence, a full disk, kills and signals. Nothing good is lost."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from prompt_jax.train import checkpointing
from prompt_jax.train import trainer
from prompt_jax.train.metrics_writer import read_metrics
from tests.conftest import T5X_TINY
from tests.train.test_trainer import REPO, _prompt_run, _run_script, fixed_answer_batches


def _poisoned(bad_from: int, factor=np.nan):
  def batches(start):
    for i, b in enumerate(fixed_answer_batches(start), start):
      w = b["decoder_loss_weights"] * (factor if i >= bad_from else 1)
      yield {**b, "decoder_loss_weights": w}
  return batches


def test_divergence_on_a_checkpoint_step_is_never_saved(tmp_path):
  _prompt_run(tmp_path, 4, fixed_answer_batches, checkpoint_period=2)
  good = np.load(tmp_path / "prompts" / "prompt_4.npy")
  # Batch index 5 is step 6, a checkpoint step: its state must not be written.
  with pytest.raises(trainer.TrainingDivergedError, match=r"step 6.*checkpoint \(step 4\)"):
    _prompt_run(tmp_path, 10, _poisoned(5), checkpoint_period=2, keep_checkpoints=1)
  assert checkpointing.Checkpointer(tmp_path).latest_step() == 4  # Nothing after it.
  np.testing.assert_array_equal(np.load(tmp_path / "prompts" / "prompt_4.npy"), good)
  assert not (tmp_path / "prompts" / "prompt_6.npy").exists()


def test_a_finite_blow_up_is_caught_by_the_parameter_norm_bound(tmp_path):
  with pytest.raises(trainer.TrainingDivergedError, match="max_param_norm=0.001"):
    _prompt_run(tmp_path, 4, fixed_answer_batches, checkpoint_period=2, max_param_norm=1e-3)
  assert checkpointing.Checkpointer(tmp_path).latest_step() is None


def test_a_zero_gradient_streak_stops_the_run(tmp_path):
  with pytest.raises(trainer.TrainingDivergedError, match="exactly 0 for 3 steps"):
    _prompt_run(tmp_path, 10, _poisoned(0, factor=0.0), checkpoint_period=100,
                max_zero_grad_steps=3)


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, monkeypatch):
  _prompt_run(tmp_path, 2, fixed_answer_batches, checkpoint_period=2)
  real_save = checkpointing.Checkpointer.save

  def full(self, state, meta):
    raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "4"))

  monkeypatch.setattr(checkpointing.Checkpointer, "save", full)
  with pytest.raises(OSError, match="No space"):
    _prompt_run(tmp_path, 4, fixed_answer_batches, checkpoint_period=2)
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2]
  monkeypatch.setattr(checkpointing.Checkpointer, "save", real_save)
  _prompt_run(tmp_path, 4, fixed_answer_batches, checkpoint_period=2)  # Space is back.
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2, 4]


def test_a_kill_between_checkpoint_and_export_is_repaired_on_restart(tmp_path):
  _prompt_run(tmp_path, 4, fixed_answer_batches, checkpoint_period=2)
  exported = tmp_path / "prompts" / "prompt_4.npy"
  expected = np.load(exported)
  exported.unlink()  # As if killed after Orbax committed step 4, before the export.
  _prompt_run(tmp_path, 4, fixed_answer_batches, checkpoint_period=2)
  np.testing.assert_array_equal(np.load(exported), expected)


@pytest.mark.slow
def test_repeated_sigkill_at_random_moments_ends_bitwise_equal(tmp_path):
  steps = 40
  reference = _run_script(tmp_path / "a", steps)
  assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()[-3000:]
  rng = random.Random(0)
  for _ in range(2):  # Two kills, each at a random moment of a (resumed) run.
    victim = _run_script(tmp_path / "b", steps)
    time.sleep(rng.uniform(4.0, 9.0))  # Start-up is ~4 s: kills land in loading or steps.
    victim.send_signal(signal.SIGKILL)
    victim.wait()
  resumed = _run_script(tmp_path / "b", steps)
  assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-3000:]
  np.testing.assert_array_equal(np.load(tmp_path / "a" / "final_prompt.npy"),
                                np.load(tmp_path / "b" / "final_prompt.npy"))
  steps_logged = [m["step"] for m in read_metrics(tmp_path / "b") if m["split"] == "train"]
  assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == steps
  assert not list((tmp_path / "b" / "checkpoints").glob("*tmp*"))


def _cli_train(model_dir, steps):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)
  args = ["--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin",
          "--gin_file=runs/prompt_finetune.gin", "--gin_file=methods/prompt_tuning.gin",
          "--gin_file=prompts/sampled_vocab.gin", f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.MIXTURE_OR_TASK_NAME='skill_gym_reverse_noword'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY}'", "--gin.BATCH_SIZE=2",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 10}", "--gin.PROMPT_LENGTH=3",
          "--gin.train.max_eval_examples=2", f"--gin.TRAIN_STEPS={steps}",
          "--gin.CHECKPOINT_PERIOD=5", f"--gin.EVAL_PERIOD={steps}"]
  return subprocess.Popen([sys.executable, "-m", "prompt_jax", "train", *args], cwd=REPO,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_stop_and_resume(tmp_path, signum):
  model_dir, steps = tmp_path / "run", 400
  proc = _cli_train(model_dir, steps)
  ckpts = model_dir / "checkpoints"
  deadline = time.time() + 240
  while not (ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
    time.sleep(0.05)
  proc.send_signal(signum)
  assert proc.wait(timeout=120) == 128 + signum
  err = proc.stderr.read().decode()
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
  line = [ln for ln in err.splitlines() if ln.startswith("prompt-jax:")][-1]
  assert signal.Signals(signum).name in line and "Rerun the same command" in line, line
  stopped = checkpointing.Checkpointer(model_dir).latest_step()
  assert stopped is not None and stopped < steps and f"step {stopped};" in line
  assert (model_dir / "prompts" / f"prompt_{stopped}.npy").exists()
  assert not list(ckpts.glob("*tmp*"))
  if signum == signal.SIGTERM:  # Resume to the end: one line per step, none twice.
    proc = _cli_train(model_dir, stopped + 5)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    logged = [m["step"] for m in read_metrics(model_dir) if m["split"] == "train"]
    assert logged == sorted(set(logged)) and logged[-1] == stopped + 5
    assert json.loads((model_dir / "run.json").read_text())["batch_size"] == 2
