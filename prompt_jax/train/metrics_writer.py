"""Run outputs: `metrics.jsonl` (one JSON object per log / eval) and TensorBoard events."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping


class MetricsWriter:
  """Appends `{"step", "split", <metric>: value}` lines and mirrors them to TensorBoard.

  TensorBoard events go to `events/train/` and `events/<split>/` (e.g. `events/eval/rte/`).
  """

  def __init__(self, model_dir: str | os.PathLike, *, tensorboard: bool = True,
               drop_after_step: int | None = None):
    """`drop_after_step`: first remove existing lines of later steps (a resumed run logs
    them again), so `metrics.jsonl` never holds a step twice."""
    self.model_dir = pathlib.Path(model_dir)
    self.model_dir.mkdir(parents=True, exist_ok=True)
    path = self.model_dir / "metrics.jsonl"
    if drop_after_step is not None and path.exists():
      kept = [line for line in path.read_text().splitlines()
              if line.strip() and json.loads(line).get("step", 0) <= drop_after_step]
      tmp = path.with_name(".metrics.jsonl.tmp")
      tmp.write_text("".join(line + "\n" for line in kept))
      os.replace(tmp, path)
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tensorboard = tensorboard
    self._writers: dict[str, Any] = {}

  def _writer(self, split: str):
    if split not in self._writers:
      from tensorboardX import SummaryWriter  # Imported lazily: only runs that log need it.
      self._writers[split] = SummaryWriter(str(self.model_dir / "events" / split))
    return self._writers[split]

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> dict[str, Any]:
    record = {"step": int(step), "split": split}
    record.update({k: _jsonable(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
    self._jsonl.flush()
    if self._tensorboard:
      writer = self._writer(split)
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
          writer.add_scalar(k, float(v), int(step))
      writer.flush()
    return record

  def close(self) -> None:
    self._jsonl.close()
    for w in self._writers.values():
      w.close()


def _jsonable(v: Any) -> Any:
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  return f if math.isfinite(f) else str(f)


def read_metrics(model_dir: str | os.PathLike) -> list[dict[str, Any]]:
  path = pathlib.Path(model_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
