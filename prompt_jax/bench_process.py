"""The bench's child processes: each mode runs in its own Python process (its peak RSS its
own), driven over a pipe by the parent (`prompt_jax.bench.run_bench`).

Protocol, one line each way: the child (`python -m prompt_jax.bench --serve NAME`) prints
`ready` once built; then `step` -> seconds, `summary` -> a JSON object, after which it exits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from prompt_jax.bench import BenchConfig


class ChildRunner:
  """A runner living in its own Python process (`--serve NAME`), driven over a pipe."""

  def __init__(self, name: str, cfg: BenchConfig):
    self.name = name
    cmd = [sys.executable, "-m", "prompt_jax.bench", f"--serve={name}", *_config_flags(cfg)]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def _ask(self, request: str | None) -> str:
    if request is not None:
      self.proc.stdin.write(request + "\n")
      self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"bench subprocess for {self.name} died (exit {self.proc.wait()}); "
                         f"its log is above.")
    return line.strip()

  def wait_ready(self) -> None:
    if self._ask(None) != "ready":
      raise RuntimeError(f"bench subprocess for {self.name} did not start.")

  def step(self) -> float:
    return float(self._ask("step"))

  def summary(self) -> dict[str, float]:
    out = json.loads(self._ask("summary"))
    self.proc.wait()
    return out

  def close(self) -> None:
    """Ends the child (if it is still running) and closes the pipes."""
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self.proc.stdin.close()
    self.proc.stdout.close()


def serve(name: str, cfg: BenchConfig) -> int:
  """The child side of `ChildRunner`: protocol on the real stdout, everything else to stderr."""
  proto = os.fdopen(os.dup(sys.stdout.fileno()), "w")
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # Stray prints cannot corrupt the pipe.
  from prompt_jax.bench import make_runner
  runner = make_runner(name, cfg)
  proto.write("ready\n")
  proto.flush()
  for line in sys.stdin:
    if line.strip() == "step":
      proto.write(f"{runner.step()!r}\n")
    elif line.strip() == "summary":
      proto.write(json.dumps(runner.summary()) + "\n")
      proto.flush()
      return 0
    proto.flush()
  return 1


def _config_flags(cfg: BenchConfig) -> list[str]:
  """`cfg` as command-line flags (for the child processes)."""
  from prompt_jax.bench import SWITCHES
  flags = [f"--{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
           if f.name not in SWITCHES]
  return flags + [f"--{name}" for name in SWITCHES if getattr(cfg, name)]
