"""The shipped table gin files (tables/lester, tables/gym): their grids, and every command
a cell would run parses as an ordinary gin run (macros used, files found, no conflicts)."""

import argparse
import shlex

import gin
import pytest

from prompt_jax import cli, configurables
from prompt_jax.studies import sweep

CKPTS = [f"{family}_{size} = '/ckpt/{family}_{size}'" for family in ("LM_ADAPTED", "T5_1_1")
         for size in ("SMALL", "BASE", "LARGE", "XL", "XXL")]
# table -> (extra bindings, number of cells with the default seeds, evals per cell)
TABLES = {
    "lester/length.gin": (CKPTS[:5], 5 * 8 * 5 * 3, 0),
    "lester/init.gin": (CKPTS[:5], 3 * 8 * 5 * 3, 0),
    "lester/pretraining.gin": (CKPTS, 3 * 8 * 5 * 3, 0),
    "lester/size.gin": (CKPTS[:5], 2 * 8 * 5 * 3, 0),
    "lester/squad_mrqa.gin": (["CHECKPOINT = '/ckpt/xxl'"], 3, 6),
    "lester/qqp_to_mrpc.gin": (["CHECKPOINT = '/ckpt/xxl'"], 3, 2),
    "lester/mrpc_to_qqp.gin": (["CHECKPOINT = '/ckpt/xxl'"], 3, 2),
    "gym/length.gin": ([], 4 * 3, 0),
    "gym/init.gin": ([], 3 * 3, 0),
    "gym/size.gin": ([], 2 * 3, 0),
}


def _table(name, extra):
  bindings = ["TABLE_DIR = '/tmp/t'"] if name.startswith("lester") else []
  cli.parse_gin([f"tables/{name}"], [*bindings, *extra], check_macros=True)
  return configurables.Table()


def _parses(argv):
  """Parses one cell command's gin exactly as `prompt-jax train / eval` would."""
  bindings, rest = cli._split_gin_flags(argv[1:])
  p = argparse.ArgumentParser()
  p.add_argument("--gin_file", action="append", default=[])
  args = p.parse_args(rest)
  return cli.parse_gin(args.gin_file, bindings, check_macros=True)


def _one_cell_per_value(table, grid):
  """The fewest cells that together take every value of every axis."""
  chosen = []
  for axis, values in table.axes.items():
    for value in values:
      cell = next(c for c in grid if dict(c.values)[axis] == value)
      if cell not in chosen:
        chosen.append(cell)
  return chosen


@pytest.mark.parametrize("name", sorted(TABLES))
def test_shipped_tables_give_their_grids_and_every_command_parses(name):
  extra, n_cells, n_evals = TABLES[name]
  try:
    table = _table(name, extra)
    grid = sweep.cells(table)
    assert len(grid) == n_cells and len({c.model_dir for c in grid}) == n_cells
    assert all(len(c.evals) == n_evals for c in grid)
    for cell in _one_cell_per_value(table, grid):
      here = dict(cell.values)
      config = _parses(cell.train)
      assert gin.query_parameter("MODEL_DIR/macro.value") == str(cell.model_dir)
      if "pretraining" in here:  # The sentinel setting trains on the sentinel task.
        sentinel = here["pretraining"] == "span corruption + sentinel"
        task = "%TASK_SENTINEL" if sentinel else "%TASK"
        assert f"MIXTURE_OR_TASK_NAME = {task}\n" in config
        lm = "lm_adapted" if here["pretraining"] == "LM-adapted" else "t5_1_1"
        assert f"/ckpt/{lm.upper()}_{here['size'].upper()}'" in config
      for _, _, argv in cell.evals:
        assert "evaluate.prompt_file" in _parses(argv)
      # What --print_commands prints is this argv, quoted for a shell.
      assert shlex.split(sweep.command_line(cell.train))[1:] == list(cell.train)
  finally:
    gin.clear_config()
