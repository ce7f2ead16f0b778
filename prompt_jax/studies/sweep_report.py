"""A sweep's outputs: results.jsonl, table.csv, table.md (mean +- std over seeds), figure.png.

The paper's layout (Lester et al. 2021, Figure 3): the score against the x axis (model
size), one line per setting (the values of the other axes), error bars = std over seeds.
Axes in `Table.average_over` are averaged first, per seed (the SuperGLUE score: the mean of
the tasks' scores); a seed that lacks one of them has no average. std is the population
standard deviation (0 for one seed), as in the cross-lingual tables.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Summary:
  """One table entry: a setting at one x value, one metric, over seeds."""
  setting: tuple[tuple[str, str], ...]  # (axis, value) of the non-x, non-averaged axes.
  x: str
  metric: str
  mean: float
  std: float
  values: tuple[float, ...]  # One per seed that has it, in seed order.

  def setting_name(self) -> str:
    return ", ".join(f"{a}={v}" for a, v in self.setting) or "all"


def summarise(table: Any, rows: Sequence[Mapping[str, Any]]) -> list[Summary]:
  """Mean +- std over seeds for every (setting, x value, metric) that has a score."""
  x_axis = table.resolved_x_axis()
  setting_axes = [a for a in table.axes if a != x_axis and a not in table.average_over]
  averaged = list(table.average_over)
  n_avg = math.prod(len(table.axes[a]) for a in averaged)
  groups: dict[tuple, dict[int, list[float]]] = {}
  for row in rows:
    cell = row["cell"]
    for metric, value in row["scores"].items():
      key = (tuple((a, cell[a]) for a in setting_axes), cell[x_axis], metric)
      groups.setdefault(key, {}).setdefault(row["seed"], []).append(float(value))
  out = []
  order = {(a, v): i for a in table.axes for i, v in enumerate(table.axes[a])}
  metrics = table.metrics()
  for key in sorted(groups, key=lambda k: ([order[s] for s in k[0]],
                                           order[(x_axis, k[1])], metrics.index(k[2]))):
    per_seed = [float(np.mean(v)) for s, v in sorted(groups[key].items()) if len(v) == n_avg]
    if per_seed:
      out.append(Summary(key[0], key[1], key[2], float(np.mean(per_seed)),
                         float(np.std(per_seed)), tuple(per_seed)))
  return out


def csv_text(table: Any, summaries: Sequence[Summary]) -> str:
  x_axis = table.resolved_x_axis()
  setting_axes = [a for a in table.axes if a != x_axis and a not in table.average_over]
  lines = [",".join([*setting_axes, x_axis, "metric", "mean", "std", "seeds", "values"])]
  for s in summaries:
    values = ";".join(f"{v:.4f}" for v in s.values)
    fields = [*(v for _, v in s.setting), s.x, s.metric, f"{s.mean:.4f}", f"{s.std:.4f}",
              str(len(s.values)), values]
    lines.append(",".join(_csv_field(f) for f in fields))
  return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
  return f'"{text}"' if any(c in text for c in ',"\n') else text


def markdown(table: Any, summaries: Sequence[Summary]) -> str:
  """One Markdown table per metric: settings as rows, x values as columns, mean ± std (n)."""
  x_axis = table.resolved_x_axis()
  xs = list(table.axes[x_axis])
  out = [f"# {table.title}", ""] if table.title else []
  for metric in table.metrics():
    mine = [s for s in summaries if s.metric == metric]
    if not mine:
      continue
    settings = list(dict.fromkeys(s.setting for s in mine))
    by = {(s.setting, s.x): s for s in mine}
    avg = f", mean over {' x '.join(table.average_over)}" if table.average_over else ""
    out += [f"**{metric}** (mean ± std over seeds (n){avg})", "",
            "| setting | " + " | ".join(f"{x_axis}={x}" for x in xs) + " |",
            "| --- |" + " --- |" * len(xs)]
    for setting in settings:
      entries = [f"{by[(setting, x)].mean:.2f} ± {by[(setting, x)].std:.2f} "
                 f"({len(by[(setting, x)].values)})" if (setting, x) in by else "–" for x in xs]
      name = mine[[s.setting for s in mine].index(setting)].setting_name()
      out.append(f"| {name} | " + " | ".join(entries) + " |")
    out.append("")
  return "\n".join(out)


def plot(table: Any, summaries: Sequence[Summary], path: pathlib.Path) -> None:
  """One panel per metric: score against the x axis, a line per setting, std error bars."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  x_axis = table.resolved_x_axis()
  xs = list(table.axes[x_axis])
  metrics = [m for m in table.metrics() if any(s.metric == m for s in summaries)] or [
      table.metrics()[0]]
  cols = min(3, len(metrics))
  rows = -(-len(metrics) // cols)
  fig = Figure(figsize=(max(6.4, 4.6 * cols), 3.6 * rows + 0.4))
  FigureCanvasAgg(fig)
  axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
  for ax, metric in zip(axes, metrics):
    mine = [s for s in summaries if s.metric == metric]
    settings = list(dict.fromkeys(s.setting for s in mine))
    for setting in settings:
      by = {s.x: s for s in mine if s.setting == setting}
      pts = [(i, by[x]) for i, x in enumerate(xs) if x in by]
      ax.errorbar([i for i, _ in pts], [s.mean for _, s in pts],
                  yerr=[s.std for _, s in pts], marker="o", capsize=3,
                  label=by[next(iter(by))].setting_name())
    ax.set_xticks(range(len(xs)), xs)
    ylabel = ("best validation metric" if metric == table.metrics()[0]
              else f"{metric} (zero-shot)")
    ax.set(xlabel=x_axis, ylabel=ylabel, title=metric)
    if settings:
      ax.legend(fontsize="small")
  for ax in axes[len(metrics):]:
    ax.set_visible(False)
  if table.title:
    fig.suptitle(table.title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def write_outputs(table: Any, rows: Sequence[Mapping[str, Any]]) -> list[Summary]:
  """results.jsonl, table.csv, table.md and figure.png in the table's dir."""
  root = pathlib.Path(table.table_dir)
  root.mkdir(parents=True, exist_ok=True)
  with open(root / "results.jsonl", "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  summaries = summarise(table, rows)
  (root / "table.csv").write_text(csv_text(table, summaries))
  (root / "table.md").write_text(markdown(table, summaries))
  plot(table, summaries, root / "figure.png")
  return summaries
