"""PoT from a source run's model dir and PANDA-style KD transfer, from the CLI (gin only)."""

import numpy as np
import pytest

from tests.test_cli_methods import _args, _metrics, _run, _saved_prompt_params
from tests.test_cli import TINY, _prompt_jax

TASK = "skill_gym_reverse_noword"
RUN = ["--gin_file=runs/prompt_finetune.gin", "--gin.PROMPT_LENGTH=3",
       "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=0"]


@pytest.mark.slow
def test_pot_from_a_run_dir_then_panda_with_a_frozen_teacher(tmp_path):
  source, pot, kd = tmp_path / "source", tmp_path / "pot", tmp_path / "kd"
  # A source run's exports (what `prompt-jax train` leaves in prompts/): FromRun takes the
  # latest step when no best was recorded.
  (source / "prompts").mkdir(parents=True)
  rng = np.random.default_rng(0)
  np.save(source / "prompts" / "prompt_4.npy", rng.normal(size=(3, 4)).astype(np.float32))
  source_prompt = rng.normal(size=(3, 4)).astype(np.float32)
  np.save(source / "prompts" / "prompt_10.npy", source_prompt)
  _run(tmp_path, "train", *TINY, *RUN, "--gin_file=methods/prompt_tuning.gin",
       "--gin_file=prompts/from_run.gin", f"--gin.SOURCE_MODEL_DIR='{source}'",
       *_args(pot, TASK), "--gin.TRAIN_STEPS=2")
  assert "FromRun" in (pot / "config.gin").read_text()
  moved = np.load(pot / "prompts" / "prompt_2.npy") - source_prompt
  # Two Adafactor steps at LR 0.3 (each update's RMS clipped to the LR) from prompt_10.
  assert 0 < np.sqrt(np.mean(moved ** 2)) <= 2 * 0.3 * 1.01
  # PANDA: a fresh student, the PoT prompt as the frozen teacher, lambda = beta * s.
  _run(tmp_path, "train", *TINY, *RUN, "--gin_file=methods/panda.gin",
       "--gin_file=prompts/sampled_vocab.gin", f"--gin.TEACHER_MODEL_DIR='{pot}'",
       "--gin.PANDA_SIMILARITY=0.5", "--gin.PANDA_PAPER_SCALING=False", *_args(kd, TASK),
       "--gin.TRAIN_STEPS=2")
  train = _metrics(kd, "train")
  assert all(m["loss/kd"] > 0 for m in train), train
  saved = _saved_prompt_params(kd, 2)
  assert set(saved) == {"prompt"}  # The teacher is frozen: never in a checkpoint.
  np.testing.assert_array_equal(np.load(kd / "prompts" / "prompt_2.npy"), saved["prompt"])


@pytest.mark.parametrize("flags, message", [
    (["--gin.TEACHER_MODEL_DIR='/nonexistent/pot'", "--gin.PANDA_SIMILARITY=0.5"],
     "does not exist"),
    (["--gin.TEACHER_MODEL_DIR='/tmp'"], "PANDA_LAMBDA"),
])
def test_panda_bad_settings_exit_2_with_one_line(tmp_path, flags, message):
  proc = _prompt_jax("train", *TINY, *RUN, "--gin_file=methods/panda.gin",
                     "--gin_file=prompts/sampled_vocab.gin", *flags,
                     *_args(tmp_path / "kd", TASK), "--gin.TRAIN_STEPS=2", cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "kd").exists()  # Found before any model is loaded or dir written.


def test_the_paper_setting_gin_files_parse_with_their_required_macros():
  import gin
  from prompt_jax import cli
  common = ["MODEL_DIR='/m'", "INITIAL_CHECKPOINT_PATH='/c'", "MIXTURE_OR_TASK_NAME='glue_rte'"]
  try:
    for name, extra, want in [
        ("pt", [], "prompts.Prompt"),
        ("pot", ["SOURCE_MODEL_DIR='/pt/glue_mnli'"], "SOURCE_MODEL_DIR = '/pt/glue_mnli'"),
        ("kd", ["TEACHER_MODEL_DIR='/pot/x'", "PANDA_SIMILARITY=0.5"], "panda.KDLoss")]:
      config = cli.parse_gin([f"tables/panda/{name}.gin"], common + extra)
      assert want in config, (name, config)
    with pytest.raises(cli.CliError, match="TEACHER_MODEL_DIR"):
      cli.parse_gin(["tables/panda/kd.gin"], common + ["PANDA_SIMILARITY=0.5"])
  finally:
    gin.clear_config()
