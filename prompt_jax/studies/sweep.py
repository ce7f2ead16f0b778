"""Table drivers: one command runs an ablation grid and writes its table and figure.

    prompt-jax sweep --gin_file=tables/lester/length.gin --gin.TABLE_DIR="'/tmp/length'" ...
    prompt-jax sweep --gin_file=tables/lester/length.gin ... --print_commands   # fan out
    prompt-jax sweep --gin_file=tables/lester/length.gin ... --collect_only     # tables only

A table gin file binds one `sweep.Table`: the base run (gin files and bindings of the
ordinary run files), named axes (axis -> value label -> more gin files and bindings),
seeds, and optionally zero-shot evaluations of each trained prompt on other tasks. Every
cell (one value per axis, one seed) is an ordinary `prompt-jax train` run in its own model
dir, with the exact command `--print_commands` prints (run in this process, or with
`--subprocess` in a fresh one):

    TABLE_DIR/
      <axis>=<value>/.../seed<s>/       the cell's model dir (what `prompt-jax train` leaves)
        eval/<label>/                   its zero-shot evals (`prompt-jax eval`), if any
        sweep_cell.json                 written when the cell is complete: it is skipped
      results.jsonl                     one line per cell: its scores
      table.csv, table.md               mean +- std over seeds per (setting, x value, metric)
      figure.png                        score against the x axis (model size), one line per
                                        setting, error bars = std over seeds

Resuming: a complete cell is skipped; any other is rerun with the same command, so an
interrupted training run resumes from its last checkpoint (the trainer's guarantee) and a
run that another machine finished returns at once. A cell's score is its best validation
metric (`train.best_metric`, recorded by the trainer in `best.json`: checkpoint selection on
validation), and each eval's metric from its `metrics.jsonl`.

Entries (in `base`, the axes and the evals): a string ending in `.gin` is a gin file, any
other string is a binding 'NAME = value', and a mapping {NAME: value} gives bindings whose
values are Python values (so gin macros can fill them, e.g. a checkpoint path); a value may be
a `GymBackbone` (the skill gym's cached backbone, built by the driver before the runs: its
path), and a mapping {"by_axis": AXIS, <value label>: value, ...} stands for the value
under the cell's label on AXIS (a size axis whose checkpoint depends on the pretraining
axis). Later entries override earlier ones: base, then the axes in order, then the driver's
MODEL_DIR and `train.seed`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

MARKER = "sweep_cell.json"
VALIDATION = "validation"  # The label of the best-validation-metric column.

Runner = Callable[[Sequence[str]], int]


class SweepError(ValueError):
  """A table configuration the user can fix (one line, exit status 2)."""


@dataclasses.dataclass(frozen=True)
class GymBackbone:
  """A skill-gym backbone of one size, model-tuned and cached as the demo's (`prompt_jax.demo`).

  Its data settings are the gym tasks' defaults (`skill_gym.GymConfig()`), so a cell's
  printed `prompt-jax train` command reads the same data in any fresh process.
  """
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  d_kv: int = 16
  d_ff: int = 128
  train_steps: int = 1000
  skills: Sequence[str] = ("copy", "reverse", "shift_1", "upper")
  cache_dir: str = ""

  def config(self):
    from prompt_jax import demo
    from prompt_jax.data import skill_gym
    data = skill_gym.GymConfig()
    return demo.BackboneConfig(skills=tuple(self.skills), d_model=self.d_model,
                               num_layers=self.num_layers, num_heads=self.num_heads,
                               d_kv=self.d_kv, d_ff=self.d_ff, train_steps=self.train_steps,
                               train_examples=data.train_examples, max_len=data.max_len,
                               seed=data.seed)

  def _root(self) -> pathlib.Path:
    from prompt_jax import demo
    return (pathlib.Path(self.cache_dir).expanduser() if self.cache_dir
            else demo.default_cache_root())

  def path(self) -> pathlib.Path:
    """Where the backbone is (or will be) cached: an HF checkpoint dir."""
    return self._root() / self.config().key()

  def ensure(self, log: Callable[[str], None] = print) -> pathlib.Path:
    """Builds the backbone through the library's model-tuning path unless it is cached."""
    from prompt_jax import demo
    bb = self.config()
    lengths = demo.register_data(bb, bb.skills[0])
    return demo.ensure_backbone(bb, self._root(), lengths["mixture"], log=log)


@dataclasses.dataclass(frozen=True)
class Table:
  """One ablation table: base run x axes x seeds (+ zero-shot evals of each prompt).

  Attributes:
    table_dir: where the cells and the tables go.
    base: entries (see the module doc) of every cell's `prompt-jax train` command.
    axes: axis name -> value label -> entries; cells are their product, in order.
    seeds: training seeds (`train.seed`: prompt init and data order).
    x_axis: the axis on the figure's x (default: 'size' if there is one, else the last).
    average_over: axes whose values are averaged into one score per seed (e.g. 'task':
      the SuperGLUE score is the mean over its tasks' best validation metrics).
    evals: label -> {"metric": key in the eval's metrics, "entries": [...]}: a
      `prompt-jax eval` of the cell's best prompt (`prompts/prompt_best.npy`).
    eval_base: entries of every eval command (run file, model family, lengths).
    shared_axes: axes whose entries also go into the eval commands (model size and
      checkpoint: the prompt is evaluated on the model it was trained on).
    title: the figure's title.
  """
  table_dir: str
  base: Sequence[Any]
  axes: Mapping[str, Mapping[str, Sequence[Any]]]
  seeds: Sequence[int] = (0,)
  x_axis: str | None = None
  average_over: Sequence[str] = ()
  evals: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  eval_base: Sequence[Any] = ()
  shared_axes: Sequence[str] = ()
  title: str = ""

  def resolved_x_axis(self) -> str:
    if self.x_axis is not None:
      return self.x_axis
    return "size" if "size" in self.axes else list(self.axes)[-1]

  def metrics(self) -> list[str]:
    return [VALIDATION, *self.evals]


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid: a value per axis and a seed."""
  values: tuple[tuple[str, str], ...]  # (axis, value label), in axis order.
  seed: int
  model_dir: pathlib.Path
  train: tuple[str, ...]  # argv of `prompt-jax`, starting with "train".
  evals: tuple[tuple[str, pathlib.Path, tuple[str, ...]], ...]  # (label, dir, argv).

  def commands(self) -> list[list[str]]:
    return [list(self.train), *(list(argv) for _, _, argv in self.evals)]

  def name(self) -> str:
    return " ".join(f"{a}={v}" for a, v in self.values) + f" seed={self.seed}"


# ---------------------------------------------------------------------------------------
# Entries -> command-line flags.


def render_value(value: Any) -> str:
  """A Python value as gin literal text (a GymBackbone: its checkpoint path)."""
  if isinstance(value, GymBackbone):
    value = str(value.path())
  if isinstance(value, pathlib.Path):
    value = str(value)
  if isinstance(value, (list, tuple)):
    return "[" + ", ".join(render_value(v) for v in value) + "]"
  if isinstance(value, Mapping):
    return "{" + ", ".join(f"{render_value(k)}: {render_value(v)}"
                           for k, v in value.items()) + "}"
  if isinstance(value, str):
    return json.dumps(value)  # Double quotes: gin reads them, and shells quote them cleanly.
  if value is None or isinstance(value, (bool, int, float)):
    return repr(value)
  raise SweepError(f"Cannot write {value!r} ({type(value).__name__}) as a gin value in a "
                   "table entry; use a string, number, list, dict or GymBackbone.")


def entry_flags(entry: Any, where: str) -> list[str]:
  """One table entry -> `--gin_file=...` / `--gin.NAME=VALUE` flags."""
  if isinstance(entry, str):
    text = entry.strip()
    if text.endswith(".gin"):
      return [f"--gin_file={text}"]
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
      raise SweepError(f"{where}: entry {entry!r} is neither a gin file (ending in .gin) "
                       "nor a binding 'NAME = value'.")
    return [f"--gin.{name.strip()}={value.strip()}"]
  if isinstance(entry, Mapping):
    return [f"--gin.{k}={render_value(v)}" for k, v in entry.items()]
  if isinstance(entry, (list, tuple)):  # A shared list of entries (a gin macro) inside a list.
    return [flag for e in entry for flag in entry_flags(e, where)]
  raise SweepError(f"{where}: entry {entry!r} must be a string (gin file or 'NAME = value') "
                   "or a mapping {NAME: value}.")


def for_cell(value: Any, cell: Mapping[str, str], where: str) -> Any:
  """Resolves every {"by_axis": AXIS, <value label>: x, ...} in `value` for one cell.

  Such a mapping stands for the x of the cell's value on AXIS, e.g. the checkpoint of a
  size axis that depends on the pretraining axis.
  """
  if isinstance(value, Mapping) and "by_axis" in value:
    axis = value["by_axis"]
    if axis not in cell:
      raise SweepError(f"{where}: by_axis names {axis!r}, not an axis of the table.")
    if cell[axis] not in value:
      raise SweepError(f"{where}: by_axis {axis!r} has no entry for its value "
                       f"{cell[axis]!r} (it has {[k for k in value if k != 'by_axis']}).")
    return for_cell(value[cell[axis]], cell, where)
  if isinstance(value, Mapping):
    return {k: for_cell(v, cell, where) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [for_cell(v, cell, where) for v in value]
  return value


def _flags(entries: Sequence[Any], where: str, cell: Mapping[str, str] | None = None
           ) -> list[str]:
  if isinstance(entries, (str, Mapping)):
    entries = [entries]
  if cell is not None:
    entries = for_cell(list(entries), cell, where)
  return [flag for e in entries for flag in entry_flags(e, where)]


def slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", str(text)).strip("_") or "_"


def validate(table: Table) -> None:
  """Checks the table's shape before anything runs."""
  if not table.axes:
    raise SweepError("sweep.Table.axes is empty: name at least one axis (e.g. size).")
  for axis, values in table.axes.items():
    if not isinstance(values, Mapping) or not values:
      raise SweepError(f"Axis {axis!r} must map value labels to entries, got {values!r}.")
  for name, axes in (("x_axis", [table.resolved_x_axis()]),
                     ("average_over", table.average_over), ("shared_axes", table.shared_axes)):
    unknown = [a for a in axes if a not in table.axes]
    if unknown:
      raise SweepError(f"sweep.Table.{name} names {unknown}, not axes of the table "
                       f"({', '.join(table.axes)}).")
  if table.resolved_x_axis() in table.average_over:
    raise SweepError("The x axis cannot also be averaged over.")
  if not table.seeds:
    raise SweepError("sweep.Table.seeds is empty.")
  for label, spec in table.evals.items():
    if not isinstance(spec, Mapping) or set(spec) != {"metric", "entries"}:
      raise SweepError(f"sweep.Table.evals[{label!r}] must be {{'metric': ..., 'entries': "
                       f"[...]}}, got {spec!r}.")
    if label == VALIDATION:
      raise SweepError(f"An eval cannot be labelled {VALIDATION!r} (the best validation "
                       "metric's column).")


def cells(table: Table) -> list[Cell]:
  """Every cell of the grid, axes in order (the last varies fastest), then seeds."""
  validate(table)
  root = pathlib.Path(table.table_dir)
  axes = list(table.axes.items())
  out = []
  for combo in itertools.product(*(list(values.items()) for _, values in axes)):
    values = tuple((axis, label) for (axis, _), (label, _) in zip(axes, combo))
    here = dict(values)
    base = _flags(table.base, "sweep.Table.base", here)
    eval_base = _flags(table.eval_base, "sweep.Table.eval_base", here)
    axis_flags, shared = [], []
    for (axis, _), (label, entries) in zip(axes, combo):
      flags = _flags(entries, f"axis {axis!r} value {label!r}", here)
      axis_flags += flags
      if axis in table.shared_axes:
        shared += flags
    for seed in table.seeds:
      model_dir = root.joinpath(*(f"{slug(a)}={slug(v)}" for a, v in values), f"seed{seed}")
      train = ("train", *base, *axis_flags, f"--gin.MODEL_DIR={render_value(model_dir)}",
               f"--gin.train.seed={seed}")
      evals = []
      for label, spec in table.evals.items():
        eval_dir = model_dir / "eval" / slug(label)
        prompt = model_dir / "prompts" / "prompt_best.npy"
        argv = ("eval", *eval_base, *shared,
                *_flags(spec["entries"], f"sweep.Table.evals[{label!r}]", here),
                f"--gin.MODEL_DIR={render_value(eval_dir)}",
                f"--gin.PROMPT_FILE={render_value(prompt)}")
        evals.append((label, eval_dir, argv))
      out.append(Cell(values, seed, model_dir, train, tuple(evals)))
  return out


def command_line(argv: Sequence[str]) -> str:
  """The shell command for one `prompt-jax` argv."""
  return " ".join(["prompt-jax", *(shlex.quote(a) for a in argv)])


def cell_command(cell: Cell) -> str:
  """One line per cell: its training command, then its evals (`&&`)."""
  return " && ".join(command_line(argv) for argv in cell.commands())


def backbones(table: Table) -> list[GymBackbone]:
  """The GymBackbones the table's entries name (each once)."""
  found: list[GymBackbone] = []

  def walk(x: Any) -> None:
    if isinstance(x, GymBackbone):
      if x not in found:
        found.append(x)
    elif isinstance(x, Mapping):
      for v in x.values():
        walk(v)
    elif isinstance(x, (list, tuple)):
      for v in x:
        walk(v)

  walk([table.base, table.eval_base, [list(v.values()) for v in table.axes.values()],
        [s.get("entries", ()) for s in table.evals.values()
         if isinstance(s, Mapping)]])
  return found


# ---------------------------------------------------------------------------------------
# Running and collecting.


def in_process(argv: Sequence[str]) -> int:
  """Runs one `prompt-jax` command in this process (what the printed command does)."""
  from prompt_jax import cli
  return cli.main(list(argv))


def in_subprocess(argv: Sequence[str]) -> int:
  """Runs one `prompt-jax` command in a fresh Python process."""
  return subprocess.run([sys.executable, "-m", "prompt_jax", *argv], check=False).returncode


def is_complete(cell: Cell) -> bool:
  """The cell's marker records exactly its current commands."""
  marker = cell.model_dir / MARKER
  if not marker.exists():
    return False
  return json.loads(marker.read_text()).get("commands") == cell.commands()


def _eval_done(eval_dir: pathlib.Path) -> bool:
  return bool(_eval_lines(eval_dir))


def _eval_lines(eval_dir: pathlib.Path) -> list[dict[str, Any]]:
  path = eval_dir / "metrics.jsonl"
  if not path.exists():
    return []
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in rows if r.get("split") == "eval"]


def run_cell(cell: Cell, runner: Runner) -> int:
  """Trains (or resumes) the cell, runs its missing evals, marks it complete; exit status."""
  rc = runner(cell.train)
  if rc:
    return rc
  if not (cell.model_dir / "best.json").exists():
    raise SweepError(f"{cell.model_dir} has no best.json: the table's base must set "
                     "train.best_metric (e.g. 'train.best_metric = \"<task>/accuracy\"'), "
                     "the validation metric each cell is scored by.")
  if cell.evals and not (cell.model_dir / "prompts" / "prompt_best.npy").exists():
    raise SweepError(f"{cell.model_dir} has no prompts/prompt_best.npy to evaluate: the "
                     "table's evals need a prompt run with train.best_metric set.")
  for _, eval_dir, argv in cell.evals:
    if not _eval_done(eval_dir):
      rc = runner(argv)
      if rc:
        return rc
  (cell.model_dir / MARKER).write_text(json.dumps(
      {"cell": dict(cell.values), "seed": cell.seed, "commands": cell.commands()},
      indent=1) + "\n")
  return 0


def cell_scores(table: Table, cell: Cell) -> dict[str, float]:
  """The cell's best validation metric and each eval's metric (those that exist so far)."""
  out = {}
  best = cell.model_dir / "best.json"
  if best.exists():
    out[VALIDATION] = float(json.loads(best.read_text())["value"])
  for label, eval_dir, _ in cell.evals:
    lines = _eval_lines(eval_dir)
    metric = table.evals[label]["metric"]
    if lines and metric in lines[-1]:
      out[label] = float(lines[-1][metric])
    elif lines:
      raise SweepError(f"{eval_dir}/metrics.jsonl has no {metric!r}; its metrics are "
                       f"{sorted(k for k in lines[-1] if '/' in k)}. Fix "
                       f"sweep.Table.evals[{label!r}]['metric'].")
  return out


@dataclasses.dataclass
class SweepResult:
  """What `run_sweep` did: the exit status, which cells ran / were skipped, the scores."""
  status: int
  ran: list[Cell]
  skipped: list[Cell]
  rows: list[dict[str, Any]]


def run_sweep(table: Table, *, runner: Runner = in_process, collect_only: bool = False,
              log: Callable[[str], None] = print) -> SweepResult:
  """Runs every incomplete cell (stops at the first failure), then writes the tables."""
  from prompt_jax.studies import sweep_report
  grid = cells(table)
  ran, skipped, status = [], [], 0
  if not collect_only:
    for bb in backbones(table):
      bb.ensure(log=log)
    for i, cell in enumerate(grid):
      if is_complete(cell):
        skipped.append(cell)
        continue
      log(f"sweep: cell {i + 1}/{len(grid)}: {cell.name()} -> {cell.model_dir}")
      ran.append(cell)
      status = run_cell(cell, runner)
      if status:
        log(f"sweep: cell {cell.name()} stopped with exit status {status}; rerun the same "
            "command to resume (complete cells are skipped).")
        break
  rows = [{"cell": dict(c.values), "seed": c.seed, "model_dir": str(c.model_dir),
           "complete": is_complete(c), "scores": cell_scores(table, c)} for c in grid]
  sweep_report.write_outputs(table, rows)
  return SweepResult(status, ran, skipped, rows)


def iter_commands(table: Table) -> Iterator[str]:
  for cell in cells(table):
    yield cell_command(cell)
