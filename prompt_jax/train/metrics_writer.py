"""Run outputs: `metrics.jsonl` (one JSON object per log / eval) and TensorBoard events.

Paths go through `prompt_jax.train.paths` (local, `file://`, gs:// ...). In a multi-host run
only process 0 writes (`enabled=False` elsewhere).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from prompt_jax.train import paths


class MetricsWriter:
  """Appends `{"step", "split", <metric>: value}` lines and mirrors them to TensorBoard.

  TensorBoard events go to `events/train/` and `events/<split>/` (e.g. `events/eval/rte/`).
  On a remote filesystem (no appends) the file is rewritten whole on each write.
  """

  def __init__(self, model_dir: str | os.PathLike, *, tensorboard: bool = True,
               drop_after_step: int | None = None, enabled: bool = True):
    """`drop_after_step`: first remove existing lines of later steps (a resumed run logs
    them again), so `metrics.jsonl` never holds a step twice. `enabled=False`: write
    nothing (the non-primary processes of a multi-host run)."""
    self.enabled = enabled
    self.model_dir = paths.as_path(model_dir)
    self._tensorboard = tensorboard
    self._writers: dict[str, Any] = {}
    self._jsonl = None
    if not enabled:
      return
    self.model_dir.mkdir(parents=True, exist_ok=True)
    self.path = self.model_dir / "metrics.jsonl"
    self._lines = self.path.read_text().splitlines() if self.path.exists() else []
    if drop_after_step is not None and self._lines:
      self._lines = [line for line in self._lines
                     if line.strip() and json.loads(line).get("step", 0) <= drop_after_step]
      tmp = self.model_dir / ".metrics.jsonl.tmp"
      tmp.write_text("".join(line + "\n" for line in self._lines))
      tmp.replace(self.path)
    if paths.is_local(os.fspath(model_dir)):
      self._jsonl = open(self.path, "a", encoding="utf-8")

  def _writer(self, split: str):
    if split not in self._writers:
      from tensorboardX import SummaryWriter  # Imported lazily: only runs that log need it.
      self._writers[split] = SummaryWriter(str(self.model_dir / "events" / split))
    return self._writers[split]

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> dict[str, Any]:
    record = {"step": int(step), "split": split}
    record.update({k: _jsonable(v) for k, v in metrics.items()})
    if not self.enabled:
      return record
    line = json.dumps(record, sort_keys=True)
    if self._jsonl is not None:
      self._jsonl.write(line + "\n")
      self._jsonl.flush()
    else:
      self._lines.append(line)
      self.path.write_text("".join(x + "\n" for x in self._lines))
    if self._tensorboard:
      writer = self._writer(split)
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
          writer.add_scalar(k, float(v), int(step))
      writer.flush()
    return record

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    for w in self._writers.values():
      w.close()


def _jsonable(v: Any) -> Any:
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  return f if math.isfinite(f) else str(f)


def read_metrics(model_dir: str | os.PathLike) -> list[dict[str, Any]]:
  path = paths.as_path(model_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
