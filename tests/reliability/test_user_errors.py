"""Every user mistake is one clear message with exit status 2, found early, losing nothing.

In-process `prompt-jax` calls on the tiny T5X fixture and a skill-gym task (8 emulated
devices, so the data-parallel size is 8 unless NUM_PARTITIONS says otherwise). Each case
checks the message, the exit status, and that nothing was written (or nothing already
written changed).
"""

from __future__ import annotations

import errno
import hashlib
import json
import pathlib

import numpy as np
import pytest

from prompt_jax import cli
from prompt_jax.train import run_dir
from tests.conftest import T5X_TINY

TINY = ["--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin"]
PROMPT_RUN = ["--gin_file=runs/prompt_finetune.gin", "--gin_file=methods/prompt_tuning.gin",
              "--gin_file=prompts/sampled_vocab.gin"]
TASK = "skill_gym_reverse_noword"


def _args(model_dir, fn="train", task=TASK):
  return [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY}'", "--gin.BATCH_SIZE=8",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 10}",
          f"--gin.{fn}.max{'_eval' if fn == 'train' else ''}_examples=8"]


def _train(model_dir, *extra):
  return ["train", *TINY, *PROMPT_RUN, *_args(model_dir), "--gin.TRAIN_STEPS=2",
          "--gin.PROMPT_LENGTH=3", *extra]


def _snapshot(path: pathlib.Path) -> dict[str, str]:
  """Every file under path with its hash (what must not change)."""
  if not path.exists():
    return {}
  return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(path.rglob("*")) if p.is_file() and p.name != run_dir.LOCK_FILE}


def _error(capsys, argv) -> str:
  code = cli.main(list(argv))
  err = capsys.readouterr().err
  assert code == 2, err
  assert "Traceback" not in err and "In call to configurable" not in err, err
  assert err.count("prompt-jax: error:") == 1, err  # One error (it may list several lines).
  return err


CASES = {
    "train_steps_zero": (["--gin.TRAIN_STEPS=0"], ["TRAIN_STEPS must be a positive integer"]),
    "train_steps_negative": (["--gin.TRAIN_STEPS=-3"], ["TRAIN_STEPS", "-3"]),
    "train_steps_type": (["--gin.TRAIN_STEPS='ten'"], ["TRAIN_STEPS", "'ten'"]),
    "prompt_length_zero": (["--gin.PROMPT_LENGTH=0"], ["PROMPT_LENGTH must be a positive"]),
    "prompt_length_negative": (["--gin.PROMPT_LENGTH=-2"], ["PROMPT_LENGTH", "-2"]),
    "checkpoint_period_zero": (["--gin.CHECKPOINT_PERIOD=0"], ["CHECKPOINT_PERIOD"]),
    "batch_not_divisible": (["--gin.BATCH_SIZE=3"], ["BATCH_SIZE=3", "data-parallel size 8"]),
    "partitions_not_dividing_devices": (["--gin.NUM_PARTITIONS=3"],
                                        ["NUM_PARTITIONS=3", "8 devices"]),
    "partitions_not_dividing_heads": (["--gin.NUM_PARTITIONS=4"],
                                      ["2 attention heads", "allow_replicated_heads"]),
    "lengths_without_targets": (["--gin.TASK_FEATURE_LENGTHS={'inputs': 12}"],
                                ["TASK_FEATURE_LENGTHS", "'targets'"]),
    "macro_typo": (["--gin.PROMPT_LENGHT=5"], ["PROMPT_LENGHT", "Did you mean PROMPT_LENGTH?"]),
    "gin_syntax": (["--gin.TRAIN_STEPS=(3"], ["Gin binding error"]),
    "eval_mode": (["--gin.train.eval_mode='beam'"], ["EVAL_MODE", "'beam'"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_training_input_is_one_message_and_nothing_is_written(capsys, tmp_path, case):
  extra, expected = CASES[case]
  err = _error(capsys, _train(tmp_path / "run", *extra))
  for text in expected:
    assert text in err, err
  assert not (tmp_path / "run" / "config.gin").exists()


def test_contradicting_size_file_names_both_shapes(capsys, tmp_path):
  # Replace the tiny size file by the small one: the checkpoint says d_model 4.
  argv = ["train", "--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/small.gin",
          *PROMPT_RUN, *_args(tmp_path / "run"), "--gin.TRAIN_STEPS=2"]
  err = _error(capsys, argv)
  assert "d_model" in err and "512" in err and "4" in err and "models/sizes" in err


@pytest.mark.parametrize("labels,expected", [
    ("['a', 'b', 'c', 'd']", "increase the prompt length"),
    ("['']", "no tokens"),
])
def test_initializer_errors_are_messages(capsys, tmp_path, labels, expected):
  argv = ["train", *TINY, "--gin_file=runs/prompt_finetune.gin",
          "--gin_file=methods/prompt_tuning.gin", "--gin_file=prompts/class_labels.gin",
          *_args(tmp_path / "run"), "--gin.TRAIN_STEPS=2", "--gin.PROMPT_LENGTH=3",
          f"--gin.CLASS_LABELS={labels}"]
  assert expected in _error(capsys, argv)


def test_file_prompt_of_another_length_is_a_message(capsys, tmp_path):
  np.save(tmp_path / "p.npy", np.zeros((5, 4), np.float32))
  argv = ["train", *TINY, "--gin_file=runs/prompt_finetune.gin",
          "--gin_file=methods/prompt_tuning.gin", "--gin_file=prompts/from_file.gin",
          *_args(tmp_path / "run"), "--gin.TRAIN_STEPS=2", "--gin.PROMPT_LENGTH=3",
          f"--gin.PROMPT_FILE='{tmp_path / 'p.npy'}'"]
  err = _error(capsys, argv)
  assert "p.npy" in err and "(5, 4)" in err


def test_prepare_of_an_unknown_task(capsys):
  err = _error(capsys, ["prepare", "glue_rte_typo"])
  assert "glue_rte_typo" in err and "prompt-jax tasks" in err


def _eval(model_dir, prompt_file, *extra, command="eval"):
  run = {"eval": "runs/prompt_eval.gin", "infer": "runs/prompt_infer.gin"}[command]
  fn = {"eval": "evaluate", "infer": "infer"}[command]
  return [command, *TINY, f"--gin_file={run}", *_args(model_dir, fn),
          f"--gin.PROMPT_FILE='{prompt_file}'", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 2-step run (the training dir the later cases must not disturb)."""
  model_dir = tmp_path_factory.mktemp("trained") / "run"
  assert cli.main(_train(model_dir, "--gin.CHECKPOINT_PERIOD=2")) == 0
  return model_dir


def test_resume_with_another_task_is_refused_and_the_run_untouched(capsys, trained):
  before = _snapshot(trained)
  argv = _train(trained, "--gin.MIXTURE_OR_TASK_NAME='skill_gym_upper_noword'",
                "--gin.TRAIN_STEPS=4")
  err = _error(capsys, argv)
  assert "mixture_or_task_name" in err and "skill_gym_upper_noword" in err
  assert "new MODEL_DIR" in err
  assert _snapshot(trained) == before


def test_resume_with_another_prompt_shape_is_refused(capsys, trained):
  before = _snapshot(trained)
  err = _error(capsys, _train(trained, "--gin.PROMPT_LENGTH=5", "--gin.TRAIN_STEPS=4"))
  assert "prompt.length: recorded 3, now 5" in err
  assert _snapshot(trained) == before


def test_a_typo_on_resume_leaves_the_run_config_alone(capsys, trained):
  before = _snapshot(trained)
  _error(capsys, _train(trained, "--gin.trian.batch_size=3"))
  assert _snapshot(trained) == before


def test_eval_into_a_training_dir_is_refused(capsys, trained):
  before = _snapshot(trained)
  err = _error(capsys, _eval(trained, trained / "prompts" / "prompt_2.npy"))
  assert "training run's dir" in err and str(trained / "eval") in err
  assert _snapshot(trained) == before


def test_unknown_infer_split_is_found_before_loading(capsys, tmp_path, trained):
  err = _error(capsys, _eval(tmp_path / "out", trained / "prompts" / "prompt_2.npy",
                             "--gin.INFER_SPLIT='tset'", command="infer"))
  assert "'tset'" in err and "validation" in err
  assert not (tmp_path / "out" / "config.gin").exists()


def test_nan_prompt_file_is_refused(capsys, tmp_path):
  np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan, np.float32))
  err = _error(capsys, _eval(tmp_path / "out", tmp_path / "nan.npy"))
  assert "nan.npy" in err and "non-finite" in err


def test_a_second_process_on_the_dir_is_refused(capsys, tmp_path):
  model_dir = tmp_path / "run"
  with run_dir.RunDirLock(model_dir):  # Another owner (a second open file description).
    err = _error(capsys, _train(model_dir))
  assert "in use by another prompt-jax process" in err
  assert not (model_dir / "config.gin").exists()


def test_write_errors_are_one_message(capsys):
  e = OSError(errno.ENOSPC, "No space left on device", "/full/run/checkpoints/4")
  assert cli._report(e) == 2
  err = capsys.readouterr().err
  assert "No space left on device" in err and "/full/run" in err and "intact" in err


def test_a_real_bug_keeps_its_trace_and_says_so(capsys):
  try:
    raise RuntimeError("boom")
  except RuntimeError as e:
    assert cli._report(e) == 1
  err = capsys.readouterr().err
  assert "Traceback" in err and "boom" in err and "a bug" in err


def test_identity_record_and_compare(tmp_path):
  run_dir.check_identity(tmp_path, {"a": 1, "b": [1, 2]}, resuming=False)
  run_dir.check_identity(tmp_path, {"a": 1, "b": [1, 2]}, resuming=True)
  with pytest.raises(run_dir.RunDirError, match=r"a: recorded 1, now 2"):
    run_dir.check_identity(tmp_path, {"a": 2, "b": [1, 2]}, resuming=True)
  assert json.loads((tmp_path / run_dir.IDENTITY_FILE).read_text()) == {"a": 1, "b": [1, 2]}
