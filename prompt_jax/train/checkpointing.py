"""Training checkpoints (Orbax) and prompt export.

A checkpoint holds only what training changes: the trainable subtree, its optimizer state,
the step, the data position and the RNG. The frozen model is re-read from the pretrained
checkpoint on every start. Orbax writes each step into a temporary directory and renames
it when complete, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any, Sequence

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from prompt_jax.train import multihost, paths
from prompt_jax.train.step import TrainState


class Checkpointer:
  """Saves and restores `TrainState` + JSON metadata under `<model_dir>/checkpoints/`."""

  def __init__(self, model_dir: str | os.PathLike, *, keep: int = 3):
    root = paths.as_path(model_dir)
    self.directory = (root.absolute() if paths.is_local(model_dir) else root) / "checkpoints"
    # A save killed mid-write leaves Orbax's temporary dir; the committed steps are intact.
    # (Process 0 cleans up; Orbax itself saves from every process.)
    if jax.process_index() == 0 and self.directory.is_dir():
      for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
        tmp.rmtree(missing_ok=True)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, meta: dict[str, Any]) -> None:
    step = int(multihost.to_host(state.step))
    tree = flax.serialization.to_state_dict(state)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    self._manager.wait_until_finished()
    logging.info("Saved checkpoint %d to %s.", step, self.directory)

  def restore(self, target: TrainState, step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]]:
    """Restores into the structure (and shardings) of `target` (arrays or ShapeDtypeStructs)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree_util.tree_map(_abstract, flax.serialization.to_state_dict(target))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state = flax.serialization.from_state_dict(target, restored["state"])
    return state, dict(restored["meta"])

  def close(self) -> None:
    self._manager.close()


def _abstract(x: Any) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  sharding = getattr(x, "sharding", None)
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def atomic_write_bytes(path: paths.PathLike, data: bytes) -> epath.Path:
  """Writes via a temporary file and rename, so readers never see a partial file."""
  path = paths.as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  tmp.write_bytes(data)
  tmp.replace(path)
  return path


def write_npy(path: paths.PathLike, array: np.ndarray) -> epath.Path:
  """An array as float32 `.npy` (no pickle), written atomically."""
  buf = io.BytesIO()
  np.save(buf, np.asarray(array, np.float32), allow_pickle=False)
  return atomic_write_bytes(path, buf.getvalue())


def export_prompt_npy(prompt: np.ndarray, model_dir: str | os.PathLike,
                      step: int | str) -> epath.Path:
  """Writes `<model_dir>/prompts/prompt_<step>.npy` ([P, D] float32, the reference format)."""
  return write_npy(paths.as_path(model_dir) / "prompts" / f"prompt_{step}.npy", prompt)


def export_run_prompts(model: Any, prompt_params: Any, model_dir: str | os.PathLike,
                       step: int | str, *, task_names: Sequence[str] = ()) -> list[epath.Path]:
  """Exports the effective prompt of a run for `step` (an int, or "best").

  Writes `prompts/prompt_<step>.npy` ([P, D], or [T, P, D] for a per-task module), one
  `prompts/<task>/prompt_<step>.npy` per task of a per-task prompt (names in task-id order),
  and `prompts/peft_<step>/` when PEFT can represent the prompt. A model without an
  effective prompt (model tuning) exports nothing.
  """
  from prompt_jax.prompts import effective  # Local: keeps the checkpoint module light.
  from prompt_jax.prompts import export
  prompt = effective.effective_prompt(model, prompt_params) if prompt_params else None
  if prompt is None:
    return []
  root = paths.as_path(model_dir)
  written = [export_prompt_npy(prompt, model_dir, step)]
  if prompt.ndim == 3:
    if len(task_names) != prompt.shape[0]:
      logging.warning("A per-task prompt of %d tasks but %d task names; per-task files "
                      "are not written.", prompt.shape[0], len(task_names))
    else:
      for name, row in zip(task_names, prompt):
        written.append(write_npy(root / "prompts" / name / f"prompt_{step}.npy", row))
  for name, array in effective.effective_exports(model, prompt_params).items():
    written.append(write_npy(root / "prompts" / f"{name}_{step}.npy", array))
  reason = effective.peft_unsupported_reason(model, prompt)
  if reason is None:
    export.export_peft_adapter(prompt, root / "prompts" / f"peft_{step}", config=model.config)
  elif reason not in _LOGGED_PEFT_REASONS:
    _LOGGED_PEFT_REASONS.add(reason)
    logging.info("No PEFT adapter is exported: %s", reason)
  return written


_LOGGED_PEFT_REASONS: set[str] = set()


def write_json(path: paths.PathLike, obj: Any) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
