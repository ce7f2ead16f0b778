"""FromRun: prompt transfer from a source run's model dir (best, else latest, or a step)."""

import jax
import numpy as np
import pytest

from prompt_jax.prompts import initializers


def _run_dir(tmp_path, steps, best=False):
  prompts = tmp_path / "run" / "prompts"
  prompts.mkdir(parents=True)
  arrays = {}
  for step in steps:
    arrays[step] = np.full((2, 3), float(step), np.float32)
    np.save(prompts / f"prompt_{step}.npy", arrays[step])
  if best:
    arrays["best"] = np.full((2, 3), -1.0, np.float32)
    np.save(prompts / "prompt_best.npy", arrays["best"])
  (prompts / "input_offset_20.npy").write_bytes(b"")  # Another export: never picked.
  return tmp_path / "run", arrays


def test_best_then_latest_then_a_step(tmp_path):
  run, arrays = _run_dir(tmp_path, [5, 20, 100])
  key = jax.random.PRNGKey(0)
  # No best recorded: the latest step (by number, not by name: 100 > 20).
  np.testing.assert_array_equal(initializers.FromRun(str(run))(key, (2, 3)), arrays[100])
  np.testing.assert_array_equal(initializers.FromRun(str(run), 20)(key, (2, 3)), arrays[20])
  (run / "prompts" / "prompt_best.npy").unlink(missing_ok=True)
  np.save(run / "prompts" / "prompt_best.npy", np.zeros((2, 3), np.float32))
  np.testing.assert_array_equal(initializers.FromRun(str(run))(key, (2, 3)), 0.0)
  np.testing.assert_array_equal(initializers.FromRun(str(run), "latest")(key, (2, 3)),
                                arrays[100])


def test_missing_run_step_or_shape_is_a_clear_error(tmp_path):
  run, _ = _run_dir(tmp_path, [5])
  key = jax.random.PRNGKey(0)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    initializers.FromRun(str(tmp_path / "nope"))(key, (2, 3))
  with pytest.raises(FileNotFoundError, match=r"exported steps: \[5\]"):
    initializers.FromRun(str(run), 7)(key, (2, 3))
  with pytest.raises(ValueError, match="which"):
    initializers.FromRun(str(run), "first")(key, (2, 3))
  with pytest.raises(ValueError, match="PROMPT_LENGTH"):
    initializers.FromRun(str(run))(key, (4, 3))
  with pytest.raises(ValueError, match="SOURCE_MODEL_DIR"):
    initializers.FromRun()(key, (2, 3))
