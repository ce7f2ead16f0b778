"""Two processes on loopback train through the CLI as one process does.

Each process has 2 emulated CPU devices (cross-process collectives: gloo); the coordinator
is 127.0.0.1 on a free port. The reference is one process with 4 devices and the same
global batch. Two layouts: NUM_PARTITIONS=1 (mesh (4, 1): each process holds whole `data`
rows) and NUM_PARTITIONS=4 (mesh (1, 4): the `model` axis spans both processes, which then
hold the same rows).

Not bitwise: the cross-process all-reduces (gloo) sum in another order than the in-process
CPU collectives, so the results agree to float32 rounding (amplified a little by Adafactor),
not bit for bit; see the README's "Pods" section.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import T5X_TINY

REPO = pathlib.Path(__file__).resolve().parents[2]
TASK = "skill_gym_reverse_noword"
STEPS = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _args(model_dir, num_partitions: int, steps: int) -> list[str]:
  return ["train", "--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin",
          "--gin_file=runs/prompt_finetune.gin", "--gin_file=methods/prompt_tuning.gin",
          "--gin_file=prompts/sampled_vocab.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY}'", "--gin.BATCH_SIZE=4",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 10}",
          f"--gin.TRAIN_STEPS={steps}", "--gin.PROMPT_LENGTH=3", "--gin.CHECKPOINT_PERIOD=1",
          "--gin.EVAL_PERIOD=0", "--gin.train.max_eval_examples=4",
          f"--gin.NUM_PARTITIONS={num_partitions}",
          "--gin.train.allow_replicated_heads=True"]  # The fixture's 2 heads on model=4.


def _env(devices: int) -> dict[str, str]:
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  return env


def _one_process(model_dir, num_partitions, steps, cwd):
  proc = subprocess.run([sys.executable, "-m", "prompt_jax", *_args(model_dir, num_partitions,
                                                                   steps)],
                        cwd=cwd, env=_env(4), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


def _two_processes(model_dir, num_partitions, steps, cwd):
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "prompt_jax", *_args(model_dir, num_partitions, steps),
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=cwd, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for i, (p, (_, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i}: {err[-3000:]}"
  return [err for _, err in outs]


def _prompt(model_dir, step):
  return np.load(pathlib.Path(model_dir) / "prompts" / f"prompt_{step}.npy", allow_pickle=False)


@pytest.mark.slow
@pytest.mark.parametrize("num_partitions", [1, 4], ids=["data_rows_per_process",
                                                        "model_axis_spans_processes"])
def test_two_processes_end_equal_to_one_up_to_float32_rounding(tmp_path, num_partitions):
  single, multi = tmp_path / "single", tmp_path / "multi"
  _one_process(single, num_partitions, STEPS, tmp_path)
  errs = _two_processes(multi, num_partitions, STEPS, tmp_path)
  for i, err in enumerate(errs):
    assert f"process {i}/2: 2 local cpu devices" in err, err[-2000:]
  assert not np.array_equal(_prompt(multi, 1), _prompt(multi, STEPS))  # It trained.
  np.testing.assert_allclose(_prompt(multi, STEPS), _prompt(single, STEPS), rtol=1e-3,
                             atol=1e-4)
  # Process 0 alone wrote the run's files; Orbax saved from both processes.
  lines = [json.loads(x) for x in (multi / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines if m["split"] == "train"] == list(range(1, STEPS + 1))
  assert sorted(p.name for p in (multi / "checkpoints").iterdir()) == ["1", "2"]
  assert (multi / f"inference/{TASK}-{STEPS}.jsonl").exists()
