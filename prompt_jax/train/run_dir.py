"""A model dir has one owner and one run: a lock, and the run's identity on record.

* `RunDirLock`: an exclusive `flock` on `MODEL_DIR/.lock`, held for the whole command. A
  second process on the same dir is refused; the kernel drops the lock when its holder
  dies, so a killed run never leaves it stuck.
* `check_identity`: what makes a run *that* run (task, model, prompt module, parameter
  groups, feature lengths, batch, seed) is written to `MODEL_DIR/run.json` when the run
  starts; a restart that would resume a checkpoint compares against it and refuses any
  difference, naming each, so two runs never mix in one dir. What is safe to change on a
  resume (train steps, eval and checkpoint periods, learning rates, the mesh) is not in it.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
from typing import Any, Mapping

from prompt_jax.train import paths

IDENTITY_FILE = "run.json"
LOCK_FILE = ".lock"


class RunDirError(ValueError):
  """A model dir that another process holds, or that belongs to another run."""


class RunDirLock:
  """Exclusive, non-blocking ownership of a model dir (a context manager)."""

  def __init__(self, model_dir: str | os.PathLike):
    self.path = paths.as_path(model_dir) / LOCK_FILE
    self._fd: int | None = None

  def __enter__(self) -> "RunDirLock":
    import jax  # Local: the lock itself needs no JAX; only "which process am I".
    if jax.process_index() != 0:
      return self  # One job, one owner: process 0 holds the lock for all its processes.
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if not paths.is_local(str(self.path)):
      logging.info("No lock on the remote model dir %s (flock needs a local path).",
                   self.path.parent)
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise RunDirError(
            f"{self.path.parent} is in use by another prompt-jax process (pid {holder}); "
            "wait for it to finish, stop it, or use another MODEL_DIR.") from None
      raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def describe(value: Any) -> Any:
  """A stable, JSON-able description of a config value (modules, specs, functions)."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, Mapping):
    return {str(k): describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
  if isinstance(value, (list, tuple)):
    return [describe(v) for v in value]
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    fields = {f.name: describe(getattr(value, f.name, None)) for f in dataclasses.fields(value)
              if f.name not in ("parent", "name")}
    return {"__class__": f"{type(value).__module__}.{type(value).__qualname__}", **fields}
  if callable(value):
    return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
  return repr(value)


def check_identity(model_dir: str | os.PathLike, identity: Mapping[str, Any], *,
                   resuming: bool) -> None:
  """Records the run's identity, or refuses to resume a checkpoint of another run.

  Args:
    model_dir: the run's dir.
    identity: what defines the run (JSON-able; see `describe`).
    resuming: whether the dir holds a checkpoint this start would resume.

  Raises:
    RunDirError: naming every setting that differs from the recorded run.
  """
  import jax
  path = paths.as_path(model_dir) / IDENTITY_FILE
  current = json.loads(json.dumps(identity, sort_keys=True))
  if resuming and path.exists():
    recorded = _flatten(json.loads(path.read_text()))
    now = _flatten(current)
    changed = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
    if changed:
      lines = "; ".join(f"{k}: recorded {_short(recorded.get(k))}, now {_short(now.get(k))}"
                        for k in changed)
      raise RunDirError(
          f"{model_dir} holds a checkpoint of a different run ({lines}). Resuming would mix "
          "the two. Use a new MODEL_DIR for the new settings, or restore them to resume; "
          "train steps, periods, learning rates and the mesh may change on a resume.")
  if jax.process_index() != 0:
    return  # Every process checks; process 0 writes.
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{IDENTITY_FILE}.tmp"
  tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"prompt": {"length": 3}} -> {"prompt.length": 3}: differences name the field."""
  if isinstance(tree, dict) and tree:
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _short(value: Any, limit: int = 160) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def refuse_training_dir(model_dir: str | os.PathLike, command: str) -> None:
  """Eval / infer never write into a training run's dir (its config and metrics)."""
  path = paths.as_path(model_dir)
  if (path / "checkpoints").exists() or (path / IDENTITY_FILE).exists():
    raise RunDirError(
        f"MODEL_DIR {path} is a training run's dir; `prompt-jax {command}` would add to its "
        f"config.gin and metrics. Give {command} its own dir, e.g. "
        f"--gin.MODEL_DIR=\"'{path / command}'\".")
