"""The training loop: partitioned steps, periodic eval, atomic checkpoints, exact resume.

The loop is a plain function. Everything it needs arrives as arguments: the model adapter
(network + prompt module + loss terms; a bare network gets the default adapter), the frozen
parameters, the initial trainable subtree, the parameter groups, a data factory
`batches(start) -> iterator` that is deterministic given how many batches were already
consumed, and an optional evaluator. Restarting with the same arguments resumes from the last
checkpoint (state, RNG and data position) and ends bitwise where an uninterrupted run ends.

The loop never learns a method's name: what it exports is the prompt module's effective
prompt (`prompt_jax.prompts.effective.effective_prompt`), what it optimises is the adapter's loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import numpy as np

from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import builder
from prompt_jax.train import checkpointing
from prompt_jax.train import multihost
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import paths
from prompt_jax.train.metrics_writer import MetricsWriter

Batch = Mapping[str, np.ndarray]
BatchFactory = Callable[[int], Iterator[Batch]]
Evaluator = Callable[[Any, int], Mapping[str, float]]


class TrainingDivergedError(RuntimeError):
  """The loss or the parameters became non-finite or insane; nothing bad was saved."""


class TrainingInterrupted(RuntimeError):
  """SIGINT / SIGTERM stopped the run after saving its current state."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Loop settings. Periods are in steps; 0 disables periodic eval (eval runs at the end)."""
  model_dir: str
  train_steps: int
  checkpoint_period: int = 1000
  eval_period: int = 0
  log_period: int = 10
  num_partitions: int = 1
  seed: int = 0
  keep_checkpoints: int = 3
  enable_dropout: bool = True
  best_metric: str | None = None  # An evaluator key; the best step by its max is recorded.
  progress_bar: bool = True
  # Names of the tasks a per-task prompt (a bank [T, P, D]) serves, in task-id order; each
  # task's prompt is also exported on its own as prompts/<task>/prompt_<step>.npy.
  task_names: tuple[str, ...] = ()
  # Health checks on the state before it is saved: a parameter norm above this bound, or
  # this many consecutive steps with an exactly zero gradient, stop the run (None: off).
  max_param_norm: float | None = 1e6
  max_zero_grad_steps: int | None = 50


@dataclasses.dataclass
class TrainResult:
  step: int
  trainable: Any  # Host (numpy) copy of the final trainable subtree.
  last_train_metrics: dict[str, float]
  last_eval_metrics: dict[str, float]
  best: dict[str, Any] | None


def _reduce(metrics: Mapping[str, Any]) -> dict[str, float]:
  return adapter_lib.reduce_metrics(metrics)


class _Run:
  """The mutable pieces of one training run (built by `train`)."""

  def __init__(self, adapter: adapter_lib.ModelAdapter, frozen, init_trainable,
               groups: opt_lib.ParamGroups, cfg: TrainerConfig, mesh=None):
    builder.maybe_initialize_distributed()
    self.cfg, self.adapter = cfg, adapter
    mesh = mesh if mesh is not None else builder.make_mesh(cfg.num_partitions)
    multihost.log_topology(mesh)
    self.setup = builder.build(adapter, groups, mesh, enable_dropout=cfg.enable_dropout)
    self.setup.check_trainable(init_trainable)
    opt_lib.log_param_counts(init_trainable, frozen)
    self.frozen = self.setup.put_frozen(frozen)
    # Export needs only the frozen part of the prompt subtree (if any), never the model.
    self.frozen_prompt = multihost.to_host({k: v for k, v in frozen.items() if k == "prompt"})
    self.checkpointer = checkpointing.Checkpointer(cfg.model_dir, keep=cfg.keep_checkpoints)
    latest = self.checkpointer.latest_step()
    if latest is None:
      self.state = self.setup.init_state(init_trainable, cfg.seed)
      self.meta: dict[str, Any] = {"batches_consumed": 0}
    else:
      self.state, self.meta = self.checkpointer.restore(
          self.setup.abstract_state(init_trainable), latest)
      logging.info("Resumed from checkpoint %d (%d batches consumed).", latest,
                   self.meta["batches_consumed"])
      # Checkpoint and export are one unit: a kill between the two is repaired here.
      if not (paths.as_path(cfg.model_dir) / "prompts" / f"prompt_{latest}.npy").exists():
        self.export(latest)
    self.batch_sh = self.setup.batch_sharding
    self.step_fn = self.setup.step_fn
    # Host-side step counter: reading `state.step` would block on the step just dispatched.
    self.step = int(multihost.to_host(self.state.step))

  def host_trainable(self) -> Any:
    """The trainable subtree as numpy in every process (gathered across processes)."""
    return multihost.to_host(self.state.params)

  def export(self, step: int | str) -> None:
    """Writes the effective prompt of the current state (and its PEFT adapter) for `step`.

    Every process gathers (a collective); process 0 alone writes.
    """
    trainable = {k: v for k, v in self.host_trainable().items() if k == "prompt"}
    if not multihost.is_primary():
      return
    checkpointing.export_run_prompts(self.adapter.module,
                              opt_lib.merge_params(trainable, self.frozen_prompt),
                              self.cfg.model_dir, step, task_names=self.cfg.task_names)

  def save(self) -> None:
    self.checkpointer.save(self.state, self.meta)
    self.export(self.step)


def _diverged(run: _Run, step: int, what: str) -> TrainingDivergedError:
  last = run.checkpointer.latest_step()
  return TrainingDivergedError(
      f"At step {step} {what}. Stopped without saving; the last good checkpoint "
      f"({'none' if last is None else f'step {last}'}) is kept in "
      f"{run.checkpointer.directory}. Lower the learning rate (e.g. --gin.LEARNING_RATE=...) "
      "or check the data, then rerun the same command to resume from it.")


class _Health:
  """Checks each step's metrics before its state can be saved."""

  def __init__(self, cfg: TrainerConfig):
    self.cfg, self.zero_streak = cfg, 0

  def check(self, metrics: Mapping[str, float], step: int, run: _Run) -> None:
    bad = [f"the {k} became {metrics[k]}" for k in ("loss", "param_norm")
           if k in metrics and not math.isfinite(metrics[k])]
    if bad:
      raise _diverged(run, step, " and ".join(bad))
    bound = self.cfg.max_param_norm
    if bound is not None and metrics.get("param_norm", 0.0) > bound:
      raise _diverged(run, step, f"the trainable parameters' norm is {metrics['param_norm']:.3g}, "
                      f"above max_param_norm={bound:g}")
    if "grad_norm" in metrics:
      self.zero_streak = self.zero_streak + 1 if metrics["grad_norm"] == 0.0 else 0
      limit = self.cfg.max_zero_grad_steps
      if limit is not None and self.zero_streak >= limit:
        raise _diverged(run, step, f"the gradient norm has been exactly 0 for {limit} steps "
                        "(the loss no longer depends on the trainable parameters)")


@contextlib.contextmanager
def _stop_signals():
  """SIGINT / SIGTERM set a flag the loop reads between steps (never mid-save)."""
  received: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield received
    return
  handler = lambda signum, frame: received.append(signum)
  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _progress(cfg: TrainerConfig, start: int):
  if not cfg.progress_bar:
    return None
  from tqdm import tqdm  # Local: only interactive runs draw a bar.
  return tqdm(total=cfg.train_steps, initial=start, unit="step", dynamic_ncols=True)


def train(model: nn.Module | adapter_lib.ModelAdapter, frozen: Any, init_trainable: Any, *,
          groups: opt_lib.ParamGroups | None = None, rules: opt_lib.Rules | None = None,
          opt_config: opt_lib.OptimizerConfig | Mapping[str, opt_lib.OptimizerConfig] | None
          = None, batches: BatchFactory, cfg: TrainerConfig,
          evaluator: Evaluator | None = None, mesh: Any = None) -> TrainResult:
  """Trains (or resumes) to `cfg.train_steps`. See the module docstring.

  Args:
    model: a `ModelAdapter`, or a bare network (default loss).
    frozen: the frozen parameters (constant; never differentiated, never saved).
    init_trainable: the initial trainable subtree (every non-frozen group's leaves).
    groups: the parameter groups; or give `rules` and `opt_config` (one OptimizerConfig for
      every trainable group, or one per group).
    batches: `start -> iterator` of host batches (see `prompt_jax.train.inputs`).
    cfg: loop settings.
    evaluator: `(trainable subtree on host, step) -> metrics`, run every eval period.
    mesh: the ('data', 'model') mesh (default: `make_mesh(cfg.num_partitions)`); pass the
      one the frozen params were loaded onto.
  """
  if groups is None:
    if rules is None:
      raise ValueError("train() needs `groups`, or `rules` with `opt_config`.")
    groups = opt_lib.as_param_groups(rules, opt_config or opt_lib.OptimizerConfig())
  run = _Run(adapter_lib.as_adapter(model), frozen, init_trainable, groups, cfg, mesh)
  # Lines logged after the checkpoint being resumed are logged again: drop the old ones.
  writer = MetricsWriter(cfg.model_dir, drop_after_step=run.step,
                         enabled=multihost.is_primary())
  data = batches(run.meta["batches_consumed"])
  with _stop_signals() as received:
    return _loop(run, writer, data, cfg, evaluator, received)


def _loop(run: _Run, writer: MetricsWriter, data: Iterator[Batch], cfg: TrainerConfig,
          evaluator: Evaluator | None, received: list[int]) -> TrainResult:
  """The step loop of `train`; stops cleanly between steps when a signal arrives."""
  bar = _progress(cfg, run.step)
  health = _Health(cfg)
  pending, last_train, last_eval, best = None, {}, {}, _read_best(cfg)
  t_log, examples = time.perf_counter(), 0
  while run.step < cfg.train_steps:
    batch = next(data)
    # Each process holds its slice of the batch.
    run.state, sums = run.step_fn(run.state, run.frozen, run.setup.put_batch(batch))
    run.meta["batches_consumed"] += 1
    run.step += 1
    step = run.step
    examples += len(batch["encoder_input_tokens"])
    if pending is not None:  # Fetch step N-1's metrics after dispatching step N.
      health.check(_reduce(pending[1]), pending[0], run)
    pending = (step, sums)
    at_ckpt = (step % cfg.checkpoint_period == 0 or step == cfg.train_steps
               or bool(received))  # A signal: save this step, then stop.
    at_eval = evaluator is not None and (
        (cfg.eval_period and step % cfg.eval_period == 0) or step == cfg.train_steps)
    if step % cfg.log_period == 0 or at_ckpt or at_eval:
      last_train = _reduce(sums)
      health.check(last_train, step, run)
      now = time.perf_counter()
      rate, t_log, examples = examples / max(now - t_log, 1e-9), now, 0
      writer.write(step, "train", {**last_train, "examples_per_s": rate})
      if bar is not None:
        bar.set_postfix(loss=f"{last_train['loss']:.4f}", ex_s=f"{rate:.1f}")
    if at_eval:
      last_eval = dict(evaluator(run.host_trainable(), step))
      writer.write(step, "eval", last_eval)
      best = _update_best(cfg, best, step, last_eval, run)
    if received and not at_ckpt:  # The signal came during this step's eval: save it too.
      health.check(_reduce(sums), step, run)
      at_ckpt = True
    if at_ckpt:
      run.save()
    if bar is not None:
      bar.update(1)
    if received:
      _close(bar, writer, run)
      name = signal.Signals(received[0]).name
      raise TrainingInterrupted(
          f"Stopped by {name} at step {step}; saved checkpoint {step} in "
          f"{run.checkpointer.directory}. Rerun the same command to resume.", received[0])
  _close(bar, writer, run)
  return TrainResult(step=run.step, trainable=run.host_trainable(),
                     last_train_metrics=last_train, last_eval_metrics=last_eval, best=best)


def _close(bar, writer: MetricsWriter, run: _Run) -> None:
  if bar is not None:
    bar.close()
  writer.close()
  run.checkpointer.close()


def _read_best(cfg: TrainerConfig) -> dict[str, Any] | None:
  path = paths.as_path(cfg.model_dir) / "best.json"
  return json.loads(path.read_text()) if path.exists() else None


def _update_best(cfg: TrainerConfig, best, step: int, metrics: Mapping[str, float], run: _Run):
  """Best-on-validation selection: records the step and exports its prompt as prompt_best."""
  if cfg.best_metric is None or cfg.best_metric not in metrics:
    return best
  value = float(metrics[cfg.best_metric])
  if not math.isfinite(value) or (best is not None and value <= best["value"]):
    return best  # A NaN score (e.g. a correlation of constant predictions) is never best.
  best = {"step": step, "metric": cfg.best_metric, "value": value}
  if multihost.is_primary():
    checkpointing.write_json(paths.as_path(cfg.model_dir) / "best.json", best)
  run.export("best")
  return best
