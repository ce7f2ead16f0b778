"""The prompt-jax CLI: end to end on the tiny gin size, clear errors, gin order independence."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from prompt_jax import cli
from tests.conftest import T5X_TINY

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin"]
TASK = "skill_gym_reverse_noword"
# A complete prompt-tuning configuration: run file, method and initializer.
PROMPT_RUN = ["--gin_file=runs/prompt_finetune.gin", "--gin_file=methods/prompt_tuning.gin",
              "--gin_file=prompts/sampled_vocab.gin"]


def _common(model_dir, extra_fn):
  return [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY}'", "--gin.BATCH_SIZE=4",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 10}",
          f"--gin.{extra_fn}.max{'_eval' if extra_fn == 'train' else ''}_examples=8"]


def _prompt_jax(*args, cwd, extra_path=None):
  """Runs the CLI in a fresh process from an unrelated directory (shipped gin files)."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      str(p) for p in (REPO, extra_path) if p is not None)}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-m", "prompt_jax", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)
  return proc


@pytest.mark.slow
def test_train_eval_infer_end_to_end(tmp_path):
  run_dir, eval_dir, infer_dir = tmp_path / "run", tmp_path / "eval", tmp_path / "infer"
  proc = _prompt_jax("train", *TINY, "--gin_file=runs/prompt_finetune.gin",
                     "--gin_file=methods/prompt_tuning.gin",
                     "--gin_file=prompts/sampled_vocab.gin", *_common(run_dir, "train"),
                     "--gin.TRAIN_STEPS=4", "--gin.PROMPT_LENGTH=3", "--gin.CHECKPOINT_PERIOD=2",
                     "--gin.EVAL_PERIOD=4", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for rel in ("config.gin", "metrics.jsonl", "prompts/prompt_4.npy", "checkpoints/4",
              f"inference/{TASK}-4.jsonl"):
    assert (run_dir / rel).exists(), rel
  assert any((run_dir / "events" / "train").iterdir())
  train_eval = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if m["split"] == "eval"][-1]
  prompt = f"--gin.PROMPT_FILE='{run_dir / 'prompts' / 'prompt_4.npy'}'"
  proc = _prompt_jax("eval", *TINY, "--gin_file=runs/prompt_eval.gin", *_common(eval_dir, "evaluate"),
                     prompt, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  fresh = json.loads((eval_dir / "metrics.jsonl").read_text().splitlines()[-1])
  keys = [k for k in train_eval if k.startswith(TASK)]
  assert keys and {k: fresh[k] for k in keys} == {k: train_eval[k] for k in keys}
  assert ((eval_dir / "inference" / f"{TASK}-eval.jsonl").read_text()
          == (run_dir / "inference" / f"{TASK}-4.jsonl").read_text())
  proc = _prompt_jax("infer", *TINY, "--gin_file=runs/prompt_infer.gin",
                     *_common(infer_dir, "infer"), prompt, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (infer_dir / "inference" / f"{TASK}-infer.jsonl").read_text().splitlines()
  assert len(lines) == 8 and set(json.loads(lines[0])) == {"inputs", "targets", "prediction"}


def _main_error(capsys, *argv) -> str:
  assert cli.main(list(argv)) == 2
  return capsys.readouterr().err


def test_typo_in_gin_binding(capsys, tmp_path):
  err = _main_error(capsys, "train", *PROMPT_RUN,
                    "--gin.trian.batch_size=3", *_common(tmp_path, "train"))
  assert "trian" in err and "Traceback" not in err


def test_unset_required_macro(capsys):
  err = _main_error(capsys, "train", "--gin_file=runs/prompt_finetune.gin",
                    "--gin_file=methods/prompt_tuning.gin", "--gin_file=prompts/sampled_vocab.gin")
  assert "MODEL_DIR" in err and "--gin.NAME=VALUE" in err


def test_unset_method_and_init_name_the_gin_folder_to_choose_from(capsys, tmp_path):
  err = _main_error(capsys, "train", *TINY, "--gin_file=runs/prompt_finetune.gin",
                    "--gin_file=prompts/sampled_vocab.gin", *_common(tmp_path, "train"))
  assert "PROMPT" in err and "--gin_file=methods/prompt_tuning.gin" in err
  assert "prompt_bank.gin" in err and "Traceback" not in err
  err = _main_error(capsys, "train", *TINY, "--gin_file=runs/prompt_finetune.gin",
                    "--gin_file=methods/prompt_tuning.gin", *_common(tmp_path, "train"))
  assert "PROMPT_INIT" in err and "--gin_file=prompts/sampled_vocab.gin" in err
  assert not (tmp_path / "config.gin").exists()  # Refused before anything was written.


def test_unknown_task(capsys, tmp_path):
  err = _main_error(capsys, "train", *PROMPT_RUN,
                    *_common(tmp_path, "train"), "--gin.MIXTURE_OR_TASK_NAME='glue_rte_typo'")
  assert "glue_rte_typo" in err and "prompt-jax tasks" in err


def test_missing_checkpoint(capsys, tmp_path):
  err = _main_error(capsys, "train", *PROMPT_RUN,
                    *_common(tmp_path / "run", "train"),
                    f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'nope'}'")
  assert "nope" in err and "INITIAL_CHECKPOINT_PATH" in err


def test_unprepared_dataset_fails_fast_with_the_prepare_command(capsys, tmp_path):
  start = time.time()
  err = _main_error(capsys, "train", *PROMPT_RUN,
                    *_common(tmp_path / "run", "train"), "--gin.MIXTURE_OR_TASK_NAME='glue_rte'",
                    f"--tfds_data_dir={tmp_path / 'tfds'}")
  assert time.time() - start < 20
  assert "glue" in err and "prompt-jax prepare glue_rte" in err


def test_tasks_lists_benchmark_tasks_with_their_status_and_the_skill_gym(capsys, tmp_path):
  assert cli.main(["tasks", f"--tfds_data_dir={tmp_path}"]) == 0
  out = capsys.readouterr().out
  rte = next(line for line in out.splitlines() if line.startswith("glue_rte "))
  assert rte.split()[1:4] == ["task", "t5", "no"]  # Nothing is prepared in an empty dir.
  assert "skill_gym_<skill>_noword" in out and "skill_gym_mix" in out


def test_missing_gin_file(capsys):
  err = _main_error(capsys, "train", "--gin_file=runs/nope.gin")
  assert "runs/nope.gin" in err


def test_gin_file_order_does_not_matter(tmp_path):
  files = ["models/t5_1_1.gin", "models/sizes/base.gin", "methods/prompt_tuning.gin",
           "prompts/class_labels.gin", "runs/prompt_finetune.gin"]
  binds = [f"MODEL_DIR='{tmp_path}'", "MIXTURE_OR_TASK_NAME='x'", "INITIAL_CHECKPOINT_PATH='y'",
           "CLASS_LABELS=['a', 'b']"]
  forward = cli.parse_gin(files, binds)
  backward = cli.parse_gin(files[::-1], binds)
  assert forward == backward and "d_model = 768" in forward


def test_conflicting_gin_files_are_an_error(tmp_path):
  (tmp_path / "other.gin").write_text("architecture.d_model = 1024\n")
  with pytest.raises(cli.CliError, match="order"):
    cli.parse_gin(["models/sizes/base.gin", str(tmp_path / "other.gin")], [])


def test_shipped_run_files_document_themselves():
  for path in (cli.GIN_DIR / "runs").glob("*.gin"):
    text = path.read_text()
    assert "Required" in text and "Commonly overridden" in text and "prompt-jax " in text, path


def test_speed_switches_reach_the_model_config_and_the_input_pipeline():
  import gin
  from prompt_jax import configurables, runs
  from prompt_jax.models import T5Config
  from prompt_jax.train import inputs
  files = ["models/t5_1_1.gin", "models/bf16_activations.gin", "models/remat.gin",
           "models/hf_dropout.gin"]
  cli.parse_gin(files, ["inputs.LengthBuckets.enabled = False"])
  try:
    overrides = runs.architecture()
    assert overrides["dtype"] == "bfloat16" and overrides["remat"] is True
    assert overrides["dropout_broadcast_length"] is False
    config = T5Config(**overrides)
    assert "remat" not in config.to_hf_dict() and "dtype" not in config.to_hf_dict()
    assert configurables.LengthBuckets() == inputs.FIXED_SHAPES
  finally:
    gin.clear_config()
  assert configurables.LengthBuckets() == inputs.LengthBuckets()  # On by default.
