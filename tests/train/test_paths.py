"""A gs:// model dir through the path layer (`prompt_jax/train/paths.py`).

The remote filesystem is faked with `etils.epath.testing.mock_epath`: every gs:// operation
epath performs lands under a local directory standing in for the bucket. Anything that
bypassed the path layer (builtin `open`, `pathlib`, `os`) would instead create a local
directory named `gs:` in the working directory, which the test checks stays empty.

Orbax's checkpoints are not part of this test: Orbax writes arrays through tensorstore, whose
gs:// driver needs a real bucket; `Checkpointer` hands Orbax the `epath.Path` unchanged.
"""

import json
import os

import gin
import numpy as np
import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing

from prompt_jax import runs
from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt
from prompt_jax.train import checkpointing, evaluation, metrics_writer, paths, run_dir
from tests.tiny import tiny_config

BUCKET = "gs://bucket"


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """(local root standing in for gs://bucket, the working directory) with epath mocked."""
  root, cwd = tmp_path / "bucket", tmp_path / "cwd"
  root.mkdir()
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  # With TensorFlow installed epath sends gs:// to tf.io.gfile, past the mocked backends.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)

  def local(path):
    text = os.fspath(path)
    return str(root) + text[len(BUCKET):] if text.startswith(BUCKET) else text

  def remote(path):
    text = os.fspath(path)
    return BUCKET + text[len(str(root)):] if text.startswith(str(root)) else text

  def one(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def two(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  def glob(original, pattern):
    return [remote(p) for p in original(local(pattern))]

  def walk(original, top, **kwargs):
    for d, dirs, files in original(local(top), **kwargs):
      yield remote(d), dirs, files

  with epath_testing.mock_epath(
      open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
      rmtree=one, stat=one, rename=two, replace=two, copy=two, glob=glob, walk=walk):
    yield root, cwd


def test_gs_model_dir_files_land_in_the_bucket(fake_bucket):
  root, cwd = fake_bucket
  model_dir = f"{BUCKET}/run"
  assert not paths.is_local(model_dir)
  with run_dir.RunDirLock(model_dir):  # No flock on a remote dir; it must not fail.
    run_dir.check_identity(model_dir, {"seed": 0}, resuming=False)
    gin.clear_config()
    runs.write_config(model_dir)
    runs.write_task_names(model_dir, ["task_a"])
  # A second start reads the identity back and refuses another run's settings.
  run_dir.check_identity(model_dir, {"seed": 0}, resuming=True)
  with pytest.raises(run_dir.RunDirError):
    run_dir.check_identity(model_dir, {"seed": 1}, resuming=True)

  writer = metrics_writer.MetricsWriter(model_dir, tensorboard=False)
  writer.write(1, "train", {"loss": 2.5})
  writer.write(2, "train", {"loss": 1.5})
  writer.close()
  # A resumed run from step 1 drops the later line before logging it again.
  metrics_writer.MetricsWriter(model_dir, tensorboard=False, drop_after_step=1).close()
  assert [m["step"] for m in metrics_writer.read_metrics(model_dir)] == [1]

  cfg = tiny_config()
  model = T5Transformer(cfg, prompt=Prompt(2))
  prompt = np.arange(2 * cfg.d_model, dtype=np.float32).reshape(2, cfg.d_model)
  written = checkpointing.export_run_prompts(model, {"prompt": {"prompt": prompt}}, model_dir, 3)
  assert [str(p) for p in written] == [f"{model_dir}/prompts/prompt_3.npy"]
  checkpointing.write_json(paths.as_path(model_dir) / "best.json", {"step": 3})
  evaluation.write_inference(model_dir, "task_a", 3,
                             [{"inputs_pretokenized": "x", "targets_pretokenized": "y"}], ["y"])

  run = root / "run"
  np.testing.assert_array_equal(np.load(run / "prompts" / "prompt_3.npy", allow_pickle=False),
                                prompt)
  assert (run / "prompts" / "peft_3").is_dir()
  assert json.loads((run / "best.json").read_text()) == {"step": 3}
  assert json.loads((run / "tasks.json").read_text()) == {"task_names": ["task_a"]}
  assert json.loads((run / "inference" / "task_a-3.jsonl").read_text())["prediction"] == "y"
  assert (run / "config.gin").exists() and (run / run_dir.IDENTITY_FILE).exists()
  # Reads come back through the layer too.
  assert paths.as_path(f"{model_dir}/prompts/prompt_3.npy").exists()
  assert list(cwd.iterdir()) == []  # Nothing went to a local "gs:" directory.
