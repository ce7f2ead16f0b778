"""`prompt-jax eval` / `infer` with PROMPT_FILES: a one-pass ensemble from the command line."""

import json

import numpy as np

from prompt_jax import cli
from tests.conftest import T5X_TINY

TINY = ["--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin"]
TASK = "skill_gym_reverse_noword"


def _argv(command, model_dir, *extra):
  run, fn = {"eval": ("runs/prompt_eval.gin", "evaluate"),
             "infer": ("runs/prompt_infer.gin", "infer")}[command]
  return [command, *TINY, f"--gin_file={run}", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY}'",
          "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 6}",
          f"--gin.{fn}.max_examples=5", *extra]


def _members(tmp_path, n=3, shape=(3, 4)):
  rng = np.random.default_rng(0)
  folder = tmp_path / "members"
  folder.mkdir()
  for i in range(n):
    np.save(folder / f"m{i}.npy", rng.normal(0, 2, shape).astype(np.float32))
  return folder


def test_eval_and_infer_with_prompt_files(tmp_path, capsys):
  folder = _members(tmp_path)
  listing = "[" + ", ".join(f"'{folder / f'm{i}.npy'}'" for i in range(3)) + "]"
  assert cli.main(_argv("eval", tmp_path / "eval", f"--gin.PROMPT_FILES={listing}")) == 0
  out = capsys.readouterr().out
  assert "| task | metric | mean of 3 | best of 3 | ensemble |" in out
  metrics = json.loads((tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()[-1])
  for key in ("exact_match", "member_0/exact_match", "member_2/exact_match",
              "members_mean/exact_match", "members_best/exact_match"):
    assert f"{TASK}/{key}" in metrics, key
  lines = (tmp_path / "eval" / "inference" / f"{TASK}-eval.jsonl").read_text().splitlines()
  row = json.loads(lines[0])
  assert len(lines) == 5 and len(row["members"]) == 3 and row["prediction"] in row["members"]
  # A dir of member files is the same ensemble (files sorted by name).
  assert cli.main(_argv("infer", tmp_path / "infer", f"--gin.PROMPT_FILES='{folder}'",
                        "--gin.INFER_SPLIT='validation'")) == 0
  inferred = (tmp_path / "infer" / "inference" / f"{TASK}-infer.jsonl").read_text()
  assert [json.loads(x)["members"] for x in inferred.splitlines()] == [
      json.loads(x)["members"] for x in lines]


def test_prompt_files_errors_are_messages(tmp_path, capsys):
  folder = _members(tmp_path)
  np.save(folder / "z.npy", np.zeros((5, 4), np.float32))
  assert cli.main(_argv("eval", tmp_path / "e1", f"--gin.PROMPT_FILES='{folder}'")) == 2
  err = capsys.readouterr().err
  assert "share one shape" in err and "z.npy (5, 4)" in err and "Traceback" not in err
  assert cli.main(_argv("eval", tmp_path / "e2", f"--gin.PROMPT_FILES='{folder}'",
                        f"--gin.PROMPT_FILE='{folder / 'z.npy'}'")) == 2
  assert "not both" in capsys.readouterr().err
  assert cli.main(_argv("eval", tmp_path / "e3")) == 2
  assert "PROMPT_FILES" in capsys.readouterr().err
  (folder / "z.npy").unlink()
  assert cli.main(_argv("eval", tmp_path / "e4", f"--gin.PROMPT_FILES='{folder}'",
                        "--gin.ENSEMBLE_VOTE='mean'")) == 2
  assert "ENSEMBLE_VOTE" in capsys.readouterr().err
