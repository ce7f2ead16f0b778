"""Checks of a run's settings, made before any model is loaded.

Each failure is one `UserError` saying what is wrong and how to fix it; the CLI prints it
without a traceback and exits with status 2. `prompt_jax.runs` calls these first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import seqio

from prompt_jax.train import evaluation, inputs, partitioning, paths


class UserError(Exception):
  """A configuration or input problem the user can fix; the CLI prints it without a trace."""


def check_task(name: str, data_dir: str | None = None) -> None:
  """Fails fast (seconds) on an unknown task or unprepared TFDS data."""
  from prompt_jax.data import registry  # Registers the benchmark tasks.
  from prompt_jax.data import skill_gym  # noqa: F401  Registers the skill-gym tasks.
  try:
    registry.check_prepared(name, data_dir)
    return
  except KeyError as e:
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
      raise UserError(str(e).strip("'\"")) from None
  except registry.DataNotPreparedError as e:
    raise UserError(str(e)) from None


def check_checkpoint_path(path: str) -> None:
  if not path:
    raise UserError("INITIAL_CHECKPOINT_PATH is not set (--gin.INITIAL_CHECKPOINT_PATH=...).")
  if paths.is_local(str(path)) and not paths.as_path(path).exists():
    raise UserError(f"Checkpoint {path} does not exist; set INITIAL_CHECKPOINT_PATH to a T5X "
                    "checkpoint dir or an HF model dir.")


def positive_int(name: str, value: Any, *, zero_ok: bool = False) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero_ok else 1):
    want = "an integer >= 0" if zero_ok else "a positive integer"
    raise UserError(f"{name} must be {want}, got {value!r} (--gin.{name}=...).")


def validate_lengths(lengths: Any) -> None:
  if not isinstance(lengths, Mapping) or set(lengths) != {"inputs", "targets"}:
    raise UserError(f"TASK_FEATURE_LENGTHS must be {{'inputs': L, 'targets': T}}, got "
                    f"{lengths!r}.")
  for key, value in lengths.items():
    positive_int(f"TASK_FEATURE_LENGTHS['{key}']", value)


def validate_mesh(num_partitions: Any, batch_size: Any,
                  dcn_mesh_shape: tuple[int, ...] | None = None) -> None:
  """NUM_PARTITIONS divides the devices; BATCH_SIZE divides over the data-parallel size;
  DCN_MESH_SHAPE (if set) places this job's processes on that mesh."""
  positive_int("NUM_PARTITIONS", num_partitions)
  positive_int("BATCH_SIZE", batch_size)
  devices = jax.device_count()
  if devices % num_partitions:
    raise UserError(f"NUM_PARTITIONS={num_partitions} must divide the {devices} devices "
                    f"(data-parallel size = devices / NUM_PARTITIONS).")
  data = devices // num_partitions
  if batch_size % data:
    raise UserError(f"BATCH_SIZE={batch_size} must be divisible by the data-parallel size "
                    f"{data} ({devices} devices / NUM_PARTITIONS={num_partitions}).")
  if dcn_mesh_shape is not None:
    try:
      partitioning.check_dcn_mesh_shape((data, num_partitions), dcn_mesh_shape,
                                        jax.process_count())
    except ValueError as e:
      raise UserError(f"{e} (--gin.DCN_MESH_SHAPE=...)") from None


def validate_prompt(prompt: nn.Module | None) -> None:
  length = getattr(prompt, "length", None)
  if length is not None:
    positive_int("PROMPT_LENGTH", length)
  check_initializer_files(prompt)


def check_initializer_files(prompt: nn.Module | None) -> None:
  """Initializers that read files (`check()`: FromFile, FromRun) find them before loading."""
  if prompt is None or not dataclasses.is_dataclass(prompt):
    return
  for field in dataclasses.fields(prompt):
    value = getattr(prompt, field.name, None)
    if callable(getattr(value, "check", None)):
      try:
        value.check()
      except (ValueError, FileNotFoundError) as e:
        raise UserError(f"Prompt initialisation failed: {e}") from None


def check_heads(num_heads: int, num_partitions: int, allow_replicated: bool) -> None:
  """Attention heads must split over the `model` axis, unless replication is asked for."""
  if num_partitions > 1 and num_heads % num_partitions and not allow_replicated:
    raise UserError(f"NUM_PARTITIONS={num_partitions} does not divide the model's {num_heads} "
                    "attention heads, so they would be replicated on every device. Pick a "
                    "NUM_PARTITIONS that divides them, or set "
                    "--gin.train.allow_replicated_heads=True.")


def check_mode(mode: str) -> None:
  if mode not in evaluation.MODES:
    raise UserError(f"EVAL_MODE must be one of {evaluation.MODES}, got {mode!r}.")


def check_split(mixture_or_task_name: str, split: str) -> None:
  """Every task of the mixture has `split` (found before any model is loaded)."""
  for name in inputs.task_names(mixture_or_task_name):
    splits = tuple(seqio.get_mixture_or_task(name).splits)
    if splits and split not in splits:
      raise UserError(f"Task {name} has no {split!r} split (it has {', '.join(splits)}); "
                      "set the split with --gin.EVAL_SPLIT=... / --gin.INFER_SPLIT=...")


def check_eval_args(name: str, split: str, lengths: Any, batch_size: Any,
                     max_examples: Any, mode: str = "generation") -> None:
  validate_lengths(lengths)
  positive_int("BATCH_SIZE", batch_size)
  if max_examples is not None:
    positive_int("max_examples", max_examples)
  check_mode(mode)
  check_split(name, split)
