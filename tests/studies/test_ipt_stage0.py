"""The stage-0 driver: one run per task, finished tasks skipped, the manifest MSF reads."""

import dataclasses
import json

import numpy as np
import pytest

from prompt_jax.prompts import ipt
from prompt_jax.studies import ipt_stage0


@dataclasses.dataclass
class FakeResult:
  step: int
  last_eval_metrics: dict


@pytest.fixture
def fake_train(monkeypatch):
  """Records each run's bindings and writes the prompt a finished run would export."""
  calls = []

  def train(gin_files, bindings, search_paths=""):
    b = dict(x.split(" = ", 1) for x in bindings)
    model_dir, task = b["MODEL_DIR"].strip("'"), b["MIXTURE_OR_TASK_NAME"].strip("'")
    calls.append(task)
    if task == "boom":
      raise RuntimeError("killed")
    prompts = __import__("pathlib").Path(model_dir) / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    np.save(prompts / "prompt_3.npy", np.full((2, 4), len(calls), np.float32))
    return FakeResult(3, {f"{task}/exact_match": 50.0})

  monkeypatch.setattr(ipt_stage0, "_train", train)
  return calls


def test_separate_runs_skip_finished_tasks_and_write_the_manifest(tmp_path, fake_train):
  with pytest.raises(RuntimeError):
    ipt_stage0.run_separate(["b", "a", "boom"], tmp_path, ["x.gin"])
  manifest = json.loads((tmp_path / "stage0.json").read_text())
  assert manifest["prompts"] == {"a": "a/prompts/prompt_3.npy", "b": "b/prompts/prompt_3.npy"}
  ipt_stage0.run_separate(["b", "a", "c"], tmp_path, ["x.gin"])  # The rerun, boom dropped.
  assert fake_train == ["b", "a", "boom", "c"]  # b and a were not trained again.
  bank = ipt.StageZeroBank(manifest=str(tmp_path / "stage0.json")).load((3, 2, 4),
                                                                       ("a", "b", "c"))
  np.testing.assert_array_equal(bank[:, 0, 0], [2.0, 1.0, 4.0])
