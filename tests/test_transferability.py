"""`prompt-jax transferability` on the tiny T5X fixture: CSV / PNG outputs, bad input -> 2."""

import csv

import numpy as np
import pytest

from prompt_jax import transferability
from tests.conftest import T5X_TINY

TASK = "skill_gym_reverse_noword"
D = 4  # The fixture's d_model.


@pytest.fixture
def prompts(tmp_path):
  rng = np.random.default_rng(0)
  src = tmp_path / "sources"
  src.mkdir()
  for name in ("b_src", "a_src"):
    np.save(src / f"{name}.npy", rng.normal(size=(3, D)).astype(np.float32))
  target = tmp_path / "target.npy"
  np.save(target, np.load(src / "a_src.npy"))  # The target prompt is a_src itself.
  return src, target


def _args(tmp_path, src, target, *extra):
  return [f"--checkpoint={T5X_TINY}", f"--source_prompts={src}", f"--target_task={TASK}",
          f"--target_prompts={target}", f"--out={tmp_path / 'out'}", "--num_examples=6",
          "--input_length=12", *extra]


def test_writes_the_matrix_csvs_and_heatmap(tmp_path, prompts, capsys):
  src, target = prompts
  assert transferability.main(_args(tmp_path, src, target)) == 0
  out = tmp_path / "out"
  for metric in transferability.METRICS:
    rows = list(csv.reader(open(out / f"{metric}.csv")))
    assert rows[0] == ["source", TASK]
    assert [r[0] for r in rows[1:]] == ["a_src", "b_src"]  # A dir's files, sorted.
    assert float(rows[1][1]) == pytest.approx(1.0, abs=1e-5)  # Identical prompts.
    assert float(rows[2][1]) < 1.0
  assert (out / "transferability.png").stat().st_size > 1000
  assert "wrote panda.csv" in capsys.readouterr().out
  # Never clobbered without --overwrite.
  assert transferability.main(_args(tmp_path, src, target)) == 2


@pytest.mark.parametrize("change, message", [
    (lambda a: [x.replace("sources", "nowhere") for x in a], "does not exist"),
    (lambda a: a + ["--pooling=max"], "--pooling"),
    (lambda a: [x.replace("--num_examples=6", "--num_examples=0") for x in a], "positive"),
    (lambda a: [x if not x.startswith("--target_task") else f"{x},{TASK}" for x in a],
     "one prompt per task"),
    (lambda a: [x if not x.startswith("--target_task") else "--target_task=nope" for x in a],
     "nope"),
])
def test_bad_input_exits_2_with_one_message(tmp_path, prompts, capsys, change, message):
  src, target = prompts
  assert transferability.main(change(_args(tmp_path, src, target))) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
