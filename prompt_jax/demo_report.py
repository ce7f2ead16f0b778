"""The demo's report: the learning-curve PNG and the before / after table.

The plot reads only what runs leave behind (`metrics.jsonl`), so it can redraw any finished
run.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

from prompt_jax.train.metrics_writer import read_metrics


def _curve(records: Sequence[Mapping[str, Any]], split: str, key: str) -> tuple[list, list]:
  """(steps, values) of one metric; a resumed run's repeated steps keep their last value."""
  points = {r["step"]: r[key] for r in records if r["split"] == split and key in r}
  return sorted(points), [points[s] for s in sorted(points)]


def plot_learning_curve(model_dir: pathlib.Path, out_png: pathlib.Path, *,
                        backbone_run: pathlib.Path | None = None, title: str = "") -> None:
  """Train loss vs step (and validation exact match) of the prompt run, beside the backbone's.

  Uses matplotlib's Agg canvas directly: no display and no global backend switch.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  backbone = read_metrics(backbone_run) if backbone_run is not None else []
  fig = Figure(figsize=(11.0 if backbone else 5.5, 4.0))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2 if backbone else 1, squeeze=False)[0]
  if backbone:
    axes[0].plot(*_curve(backbone, "train", "loss"), color="tab:gray")
    axes[0].set(title="backbone: model tuning (with task words)", xlabel="step",
                ylabel="train loss", yscale="log")
  ax = axes[-1]
  records = read_metrics(model_dir)
  ax.plot(*_curve(records, "train", "loss"), color="tab:blue", label="train loss")
  ax.set(title=title or "prompt tuning (no task word)", xlabel="step", ylabel="train loss",
         yscale="log")
  handles = ax.get_lines()
  steps, em = _curve(records, "eval", "exact_match")
  if steps:
    twin = ax.twinx()
    handles += twin.plot(steps, em, "o-", color="tab:orange", label="validation exact match")
    twin.set(ylabel="exact match", ylim=(-2, 102))
  # One legend for both axes, below the plot: inside it would cover one of the curves.
  ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
  fig.tight_layout()
  out_png.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_png, dpi=100)


def format_table(skill: str, n: int, reference: float, before: float, after: float,
                 prompt_length: int) -> str:
  """The before / after table (held-out test split, greedy decoding)."""
  rows = [("backbone + task word (reference)", reference),
          ("before: bare input, no prompt (zero-shot)", before),
          (f"after:  bare input + tuned prompt (P={prompt_length})", after)]
  width = max(len(name) for name, _ in rows)
  return "\n".join(
      [f"skill {skill!r}: exact match on {n} held-out test examples (greedy decoding)",
       f"  {'setting':<{width}}  exact_match (%)"]
      + [f"  {name:<{width}}  {value:15.1f}" for name, value in rows])
