"""EPT-style from the CLI: methods/ept.gin trains, its two exports evaluate alike in a fresh
process (PROMPT_FILE + OFFSET_FILE), the gate is in metrics.jsonl, no PEFT adapter."""

import numpy as np
import pytest

from tests.test_cli import TINY
from tests.test_cli_methods import STEPS, _args, _metrics, _run

TASK = "skill_gym_reverse_noword"
# T5X tiny: d_model 4. A 50-token budget, S = 4, L_max = the inputs' 12.
EPT = ["--gin_file=runs/prompt_finetune.gin", "--gin_file=methods/ept.gin",
       "--gin_file=prompts/sampled_vocab.gin", "--gin.PROMPT_LENGTH=50",
       "--gin.EPT_SHORT_LENGTH=4", "--gin.EPT_MAX_LENGTH=12",
       "--gin.LOW_RANK_LEARNING_RATE=0.01", "--gin.MIXER_LEARNING_RATE=0.01"]


@pytest.mark.slow
def test_ept_trains_from_gin_and_prompt_plus_offset_evaluate_alike(tmp_path):
  run = tmp_path / "run"
  _run(tmp_path, "train", *TINY, *EPT, *_args(run, TASK), f"--gin.TRAIN_STEPS={STEPS}",
       f"--gin.EVAL_PERIOD={STEPS}", "--gin.CHECKPOINT_PERIOD=2")
  train = _metrics(run, "train")
  gates = [[m[f"diag/prompt/projection/gate/{k}"] for k in range(4)] for m in train]
  assert all(abs(sum(g) - 1) < 1e-5 for g in gates), gates
  assert not any(k.startswith("loss/") for k in train[-1])
  prompts = run / "prompts"
  prompt, offset = prompts / f"prompt_{STEPS}.npy", prompts / f"input_offset_{STEPS}.npy"
  assert np.load(prompt).shape == (4, 4) and np.load(offset).shape == (12, 4)
  assert np.any(np.load(offset) != 0)  # The low-rank part trained.
  assert not (prompts / f"peft_{STEPS}").exists()  # PEFT has no such method.
  eval_dir = tmp_path / "eval"
  _run(tmp_path, "eval", *TINY, "--gin_file=runs/prompt_eval.gin",
       *_args(eval_dir, TASK, "evaluate"), f"--gin.PROMPT_FILE='{prompt}'",
       f"--gin.OFFSET_FILE='{offset}'")
  final, fresh = _metrics(run, "eval")[-1], _metrics(eval_dir, "eval")[-1]
  keys = [k for k in final if k.startswith(TASK)]
  assert keys and {k: fresh[k] for k in keys} == {k: final[k] for k in keys}
  assert ((eval_dir / "inference" / f"{TASK}-eval.jsonl").read_text()
          == (run / "inference" / f"{TASK}-{STEPS}.jsonl").read_text())


def test_bench_method_times_the_budget_matched_method_against_the_plain_prompt(capsys):
  """`prompt-jax bench --method ept` on the tiny model: the JSON's shape (never its speed)."""
  import json
  from prompt_jax import bench
  argv = ["--tiny", "--steps", "1", "--warmup", "0", "--dropout_rate", "0", "--in_process",
          "--method", "ept"]
  assert bench.main(argv) == 0
  result = json.loads(capsys.readouterr().out.strip())
  assert result["method"] == "ept"
  setting = result["setting"]
  assert setting["short_length"] == 60 and setting["max_length"] == 12
  # Budget-matched: within one rank's worth of the plain 100-token prompt (d_model 16).
  assert 0 <= setting["budget_trainable_params"] - setting["trainable_params"] < 12 + 16
  assert setting["budget_trainable_params"] == 100 * 16
  for mode in bench.METHOD_MODES:
    assert result[mode]["steps_per_s"] > 0 and result[mode]["flops_per_step"] > 0
  for kind in ("train", "eval"):
    assert result[f"{kind}_time_ratio"] == pytest.approx(
        result[f"budget_prompt_{kind}"]["steps_per_s"] / result[f"method_{kind}"]["steps_per_s"])
  # Shorter encoder sequences (60 + 12 vs 100 + 12 positions): fewer FLOPs per step.
  assert result["method_train"]["flops_per_step"] < result["budget_prompt_train"]["flops_per_step"]


@pytest.mark.parametrize("method", ["dept", "dept_fusion", "dept_multispace", "ept",
                                    "prompt_tuning"])
def test_the_13_task_suite_files_parse_with_every_method(method):
  import gin
  from prompt_jax import cli
  from prompt_jax.data import suites
  tasks = sorted(p.stem for p in (cli.GIN_DIR / "tables" / "ept13").glob("*.gin")
                 if p.stem != "common")
  assert tasks == sorted(suites.DEPT_TASKS)
  try:
    for task in tasks:
      config = cli.parse_gin([f"tables/ept13/{task}.gin", f"methods/{method}.gin"],
                             ["MODEL_DIR='/tmp/x'", "INITIAL_CHECKPOINT_PATH='/tmp/ckpt'"])
      assert f"'dept_{task}'" in config and "d_model = 768" in config, task
      assert ("EPTPrompt" in config) == (method != "prompt_tuning")
  finally:
    gin.clear_config()
