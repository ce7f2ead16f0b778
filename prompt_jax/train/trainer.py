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

import dataclasses
import json
import logging
import math
import pathlib
import time
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import builder
from prompt_jax.train import checkpointing
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train.metrics_writer import MetricsWriter

Batch = Mapping[str, np.ndarray]
BatchFactory = Callable[[int], Iterator[Batch]]
Evaluator = Callable[[Any, int], Mapping[str, float]]


class TrainingDivergedError(RuntimeError):
  """The loss or the parameters became NaN or infinite."""


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
               groups: opt_lib.ParamGroups, cfg: TrainerConfig):
    builder.maybe_initialize_distributed()
    self.cfg, self.adapter = cfg, adapter
    self.setup = builder.build(adapter, groups, builder.make_mesh(cfg.num_partitions),
                               enable_dropout=cfg.enable_dropout)
    self.setup.check_trainable(init_trainable)
    opt_lib.log_param_counts(init_trainable, frozen)
    self.frozen = self.setup.put_frozen(frozen)
    # Export needs only the frozen part of the prompt subtree (if any), never the model.
    self.frozen_prompt = jax.device_get({k: v for k, v in frozen.items() if k == "prompt"})
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
    self.batch_sh = self.setup.batch_sharding
    self.step_fn = self.setup.step_fn
    # Host-side step counter: reading `state.step` would block on the step just dispatched.
    self.step = int(jax.device_get(self.state.step))

  def host_trainable(self) -> Any:
    return jax.device_get(self.state.params)

  def export(self, step: int | str) -> None:
    """Writes the effective prompt of the current state (and its PEFT adapter) for `step`."""
    trainable = {k: v for k, v in self.host_trainable().items() if k == "prompt"}
    checkpointing.export_run_prompts(self.adapter.module,
                              opt_lib.merge_params(trainable, self.frozen_prompt),
                              self.cfg.model_dir, step, task_names=self.cfg.task_names)

  def save(self) -> None:
    self.checkpointer.save(self.state, self.meta)
    self.export(self.step)


def _check_finite(metrics: dict[str, float], step: int, run: _Run) -> None:
  bad = {k: metrics[k] for k in ("loss", "param_norm") if k in metrics
         and not math.isfinite(metrics[k])}
  if bad:
    last = run.checkpointer.latest_step()
    what = ", ".join(f"{k} became {v}" for k, v in bad.items())
    raise TrainingDivergedError(
        f"At step {step} the {what}. Stopped without saving; the last good "
        f"checkpoint ({'none' if last is None else f'step {last}'}) is kept in "
        f"{run.checkpointer.directory}. Lower the learning rate or check the data, then "
        "rerun the same command to resume from it.")


def _progress(cfg: TrainerConfig, start: int):
  if not cfg.progress_bar:
    return None
  from tqdm import tqdm  # Local: only interactive runs draw a bar.
  return tqdm(total=cfg.train_steps, initial=start, unit="step", dynamic_ncols=True)


def train(model: nn.Module | adapter_lib.ModelAdapter, frozen: Any, init_trainable: Any, *,
          groups: opt_lib.ParamGroups | None = None, rules: opt_lib.Rules | None = None,
          opt_config: opt_lib.OptimizerConfig | Mapping[str, opt_lib.OptimizerConfig] | None
          = None, batches: BatchFactory, cfg: TrainerConfig,
          evaluator: Evaluator | None = None) -> TrainResult:
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
  """
  if groups is None:
    if rules is None:
      raise ValueError("train() needs `groups`, or `rules` with `opt_config`.")
    groups = opt_lib.as_param_groups(rules, opt_config or opt_lib.OptimizerConfig())
  run = _Run(adapter_lib.as_adapter(model), frozen, init_trainable, groups, cfg)
  writer = MetricsWriter(cfg.model_dir)
  data = batches(run.meta["batches_consumed"])
  bar = _progress(cfg, run.step)
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
      _check_finite(_reduce(pending[1]), pending[0], run)
    pending = (step, sums)
    at_ckpt = step % cfg.checkpoint_period == 0 or step == cfg.train_steps
    at_eval = evaluator is not None and (
        (cfg.eval_period and step % cfg.eval_period == 0) or step == cfg.train_steps)
    if step % cfg.log_period == 0 or at_ckpt or at_eval:
      last_train = _reduce(sums)
      _check_finite(last_train, step, run)
      now = time.perf_counter()
      rate, t_log, examples = examples / max(now - t_log, 1e-9), now, 0
      writer.write(step, "train", {**last_train, "examples_per_s": rate})
      if bar is not None:
        bar.set_postfix(loss=f"{last_train['loss']:.4f}", ex_s=f"{rate:.1f}")
    if at_eval:
      last_eval = dict(evaluator(run.host_trainable(), step))
      writer.write(step, "eval", last_eval)
      best = _update_best(cfg, best, step, last_eval, run)
    if at_ckpt:
      run.save()
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  writer.close()
  run.checkpointer.close()
  return TrainResult(step=run.step, trainable=run.host_trainable(),
                     last_train_metrics=last_train, last_eval_metrics=last_eval, best=best)


def _read_best(cfg: TrainerConfig) -> dict[str, Any] | None:
  path = pathlib.Path(cfg.model_dir) / "best.json"
  return json.loads(path.read_text()) if path.exists() else None


def _update_best(cfg: TrainerConfig, best, step: int, metrics: Mapping[str, float], run: _Run):
  """Best-on-validation selection: records the step and exports its prompt as prompt_best."""
  if cfg.best_metric is None or cfg.best_metric not in metrics:
    return best
  value = float(metrics[cfg.best_metric])
  if not math.isfinite(value) or (best is not None and value <= best["value"]):
    return best  # A NaN score (e.g. a correlation of constant predictions) is never best.
  best = {"step": step, "metric": cfg.best_metric, "value": value}
  checkpointing.write_json(pathlib.Path(cfg.model_dir) / "best.json", best)
  run.export("best")
  return best
