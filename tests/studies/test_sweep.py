"""`prompt-jax sweep`: a 2 x 2 grid of tiny runs, resuming after a kill, printed commands.

The grid's axes (init x training steps) leave the compiled programs unchanged, so with a
persistent compilation cache the cells after the first reuse its compiled steps.
"""

import json
import os
import pathlib
import shlex
import signal

import jax
import pytest

from prompt_jax import sweep as sweep_cli
from prompt_jax.studies import sweep, sweep_report
from prompt_jax.train import trainer
from tests.conftest import T5X_TINY

TASK = "skill_gym_reverse_noword"
TABLE = """
TABLE_DIR = %gin.REQUIRED
sweep.Table.table_dir = %TABLE_DIR
sweep.Table.title = "tiny"
sweep.Table.base = [
    "runs/prompt_finetune.gin", "models/t5_1_1.gin", "models/sizes/tiny.gin",
    "methods/prompt_tuning.gin",
    {"MIXTURE_OR_TASK_NAME": "skill_gym_reverse_noword",
     "INITIAL_CHECKPOINT_PATH": %CHECKPOINT,
     "TASK_FEATURE_LENGTHS": {"inputs": 12, "targets": 10}},
    "BATCH_SIZE = 8", "CHECKPOINT_PERIOD = 1", "EVAL_PERIOD = 0", "PROMPT_LENGTH = 2",
    "train.max_eval_examples = 8", "train.best_metric = 'skill_gym_reverse_noword/exact_match'",
    "trainer.TrainerConfig.progress_bar = False",
]
sweep.Table.axes = {
    "init": {"sampled vocab": ["prompts/sampled_vocab.gin"],
             "random uniform": ["prompts/random_uniform.gin"]},
    "steps": {"2": ["TRAIN_STEPS = 2"], "3": ["TRAIN_STEPS = 3"]},
}
sweep.Table.x_axis = "steps"
sweep.Table.seeds = [0]
"""


@pytest.fixture
def compile_cache(tmp_path):
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  for n, v in zip(names, (str(tmp_path / "xla_cache"), 0.0, 0)):
    jax.config.update(n, v)
  yield
  for n, v in old.items():
    jax.config.update(n, v)


@pytest.fixture
def table_file(tmp_path):
  path = tmp_path / "tiny_table.gin"
  path.write_text(f"CHECKPOINT = '{T5X_TINY}'\n" + TABLE)
  return path


def _flags(table_file, table_dir):
  return [f"--gin_file={table_file}", f"--gin.TABLE_DIR='{table_dir}'"]


def _table(table_file, table_dir) -> sweep.Table:
  from prompt_jax import cli, configurables
  cli.parse_gin([str(table_file)], [f"TABLE_DIR = '{table_dir}'"])
  return configurables.Table()


def test_print_commands_lists_exactly_the_cells(table_file, tmp_path, capsys):
  assert sweep_cli.main([*_flags(table_file, tmp_path / "t"), "--print_commands"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  grid = sweep.cells(_table(table_file, tmp_path / "t"))
  assert [shlex.split(line) for line in lines] == [["prompt-jax", *c.train] for c in grid]
  dirs = {pathlib.Path(a.split("=", 1)[1].strip("\"")) for line in lines
          for a in shlex.split(line) if a.startswith("--gin.MODEL_DIR=")}
  assert dirs == {tmp_path / "t" / f"init={i}" / f"steps={n}" / "seed0"
                  for i in ("sampled_vocab", "random_uniform") for n in ("2", "3")}
  assert not (tmp_path / "t").exists()  # Nothing ran.


@pytest.mark.slow
def test_grid_killed_mid_way_resumes_only_the_missing_cells_and_writes_the_table(
    table_file, tmp_path, monkeypatch, compile_cache):
  table_dir = tmp_path / "t"
  table = _table(table_file, table_dir)
  grid = sweep.cells(table)
  third = grid[2]
  save = trainer._Run.save

  def save_then_kill(run):  # A SIGINT arrives right after cell 3 saved step 1.
    save(run)
    if run.step == 1 and run.cfg.model_dir == str(third.model_dir):
      os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(trainer._Run, "save", save_then_kill)
  first = sweep.run_sweep(table, log=lambda s: None)
  assert first.status == 128 + signal.SIGINT
  assert [c.model_dir for c in first.ran] == [c.model_dir for c in grid[:3]]
  assert sorted(p.name for p in (third.model_dir / "checkpoints").iterdir()
                if p.name.isdigit()) == ["1"]
  assert not sweep.is_complete(third) and not grid[3].model_dir.exists()
  before = {c.model_dir: (c.model_dir / "metrics.jsonl").stat().st_mtime_ns for c in grid[:2]}

  monkeypatch.setattr(trainer._Run, "save", save)
  starts, init = {}, trainer._Run.__init__

  def record_start(run, *args, **kwargs):
    init(run, *args, **kwargs)
    starts[run.cfg.model_dir] = run.step

  monkeypatch.setattr(trainer._Run, "__init__", record_start)
  seen = []
  second = sweep.run_sweep(table, runner=lambda argv: seen.append(list(argv)) or
                           sweep.in_process(argv), log=lambda s: None)
  assert second.status == 0
  assert [c.model_dir for c in second.skipped] == [c.model_dir for c in grid[:2]]
  assert seen == [list(third.train), list(grid[3].train)]
  assert {c.model_dir: (c.model_dir / "metrics.jsonl").stat().st_mtime_ns
          for c in grid[:2]} == before
  assert starts == {str(third.model_dir): 1, str(grid[3].model_dir): 0}  # Resumed at 1.

  best = {c.model_dir: json.loads((c.model_dir / "best.json").read_text())["value"]
          for c in grid}
  rows = (table_dir / "table.csv").read_text().splitlines()
  assert rows[0] == "init,steps,metric,mean,std,seeds,values"
  got = {tuple(r.split(",")[:2]): float(r.split(",")[3]) for r in rows[1:]}
  assert got == {(dict(c.values)["init"], dict(c.values)["steps"]): pytest.approx(
      best[c.model_dir], abs=1e-4) for c in grid}
  md = (table_dir / "table.md").read_text()
  assert "| setting | steps=2 | steps=3 |" in md
  assert "| init=sampled vocab |" in md and "| init=random uniform |" in md
  assert (table_dir / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert len((table_dir / "results.jsonl").read_text().splitlines()) == 4


def test_summary_averages_an_axis_per_seed_then_takes_mean_and_std_over_seeds(tmp_path):
  table = sweep.Table(table_dir=str(tmp_path), base=[], seeds=[0, 1], average_over=["task"],
                      axes={"init": {"a": [], "b": []}, "task": {"t1": [], "t2": []},
                            "size": {"S": [], "L": []}})
  rows = []
  for init, task, size, seed, value in [
      ("a", "t1", "S", 0, 10.0), ("a", "t2", "S", 0, 20.0),  # seed 0: 15
      ("a", "t1", "S", 1, 30.0), ("a", "t2", "S", 1, 40.0),  # seed 1: 35
      ("a", "t1", "L", 0, 50.0),  # t2 missing: no score for (a, L)
      ("b", "t1", "S", 0, 1.0), ("b", "t2", "S", 0, 3.0)]:  # one seed: 2 +- 0
    rows.append({"cell": {"init": init, "task": task, "size": size}, "seed": seed,
                 "scores": {sweep.VALIDATION: value}})
  got = {(s.setting, s.x): (s.mean, s.std, s.values)
         for s in sweep_report.summarise(table, rows)}
  assert got == {((("init", "a"),), "S"): (25.0, 10.0, (15.0, 35.0)),
                 ((("init", "b"),), "S"): (2.0, 0.0, (2.0,))}
  md = sweep_report.markdown(table, sweep_report.summarise(table, rows))
  assert "| init=a | 25.00 ± 10.00 (2) | – |" in md


def test_bad_tables_are_one_line_errors(tmp_path, capsys):
  bad = tmp_path / "bad.gin"
  bad.write_text("sweep.Table.table_dir = 'x'\nsweep.Table.base = ['PROMPT_LENGTH']\n"
                 "sweep.Table.axes = {'a': {'1': []}}\n")
  assert sweep_cli.main([f"--gin_file={bad}", "--print_commands"]) == 2
  assert "neither a gin file" in capsys.readouterr().err
  bad.write_text("sweep.Table.table_dir = 'x'\nsweep.Table.base = []\n"
                 "sweep.Table.axes = {'a': {'1': []}}\nsweep.Table.average_over = ['b']\n")
  assert sweep_cli.main([f"--gin_file={bad}", "--print_commands"]) == 2
  assert "average_over names ['b']" in capsys.readouterr().err
