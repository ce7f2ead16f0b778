"""The training loop: partitioned steps, periodic eval, atomic checkpoints, exact resume.

The loop is a plain function. Everything it needs arrives as arguments: the model (with its
prompt module), the frozen parameters, the initial trainable subtree, the freezing rules, a
data factory `batches(start) -> iterator` that is deterministic given how many batches were
already consumed, and an optional evaluator. Restarting with the same arguments resumes from
the last checkpoint (state, RNG and data position) and ends bitwise where an uninterrupted
run ends.
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

from prompt_jax.prompts import export
from prompt_jax.train import checkpointing
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import partitioning
from prompt_jax.train import step as step_lib
from prompt_jax.train.metrics_writer import MetricsWriter

Batch = Mapping[str, np.ndarray]
BatchFactory = Callable[[int], Iterator[Batch]]
Evaluator = Callable[[Any, int], Mapping[str, float]]


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite."""


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
  z_loss: float = 1e-4
  keep_checkpoints: int = 3
  enable_dropout: bool = True
  best_metric: str | None = None  # An evaluator key; the best step by its max is recorded.
  progress_bar: bool = True


@dataclasses.dataclass
class TrainResult:
  step: int
  trainable: Any  # Host (numpy) copy of the final trainable subtree.
  last_train_metrics: dict[str, float]
  last_eval_metrics: dict[str, float]
  best: dict[str, Any] | None


def _abstract_params(model: nn.Module) -> Any:
  """Boxed parameter shapes with logical axes (no compute, no memory)."""
  tokens = jnp.ones((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens,
                                           task_ids=jnp.zeros((1,), jnp.int32)))["params"]


def _reduce(sums: Mapping[str, Any]) -> dict[str, float]:
  s = {k: float(v) for k, v in jax.device_get(dict(sums)).items()}
  w = max(s.get("weight_sum", 0.0), 1.0)
  out = {"loss": s["loss_sum"] / w, "z_loss": s["z_loss_sum"] / w,
         "token_accuracy": s["correct_sum"] / w}
  if "grad_norm" in s:
    out["grad_norm"] = s["grad_norm"]
  return out


def exportable_prompt(trainable: Mapping[str, Any]) -> np.ndarray | None:
  """The [P, D] prompt to export, when the trainable tree holds a single prompt."""
  p = trainable.get("prompt", {}).get("prompt") if isinstance(trainable, Mapping) else None
  if p is None or np.ndim(p) != 2:
    return None
  return np.asarray(jax.device_get(p), np.float32)


class _Run:
  """The mutable pieces of one training run (built by `train`)."""

  def __init__(self, model, frozen, init_trainable, rules, opt_config, cfg: TrainerConfig):
    partitioning.maybe_initialize_distributed()
    self.cfg = cfg
    self.mesh = partitioning.make_mesh(cfg.num_partitions)
    boxed = _abstract_params(model)
    labels = opt_lib.label_params(nn.unbox(boxed), rules)
    train_sh, frozen_sh = opt_lib.split_params(partitioning.shardings_for(boxed, self.mesh), labels)
    opt_lib.log_param_counts(init_trainable, frozen)
    self.optimizer = opt_lib.make_optimizer(opt_config, rules)
    state = step_lib.init_train_state(init_trainable, self.optimizer,
                                      jax.random.PRNGKey(cfg.seed))
    self.state_sh = step_lib.state_shardings(jax.eval_shape(lambda: state), train_sh, self.mesh)
    self.frozen = jax.device_put(frozen, frozen_sh)
    self.checkpointer = checkpointing.Checkpointer(cfg.model_dir, keep=cfg.keep_checkpoints)
    latest = self.checkpointer.latest_step()
    if latest is None:
      # A private copy: the step donates its state buffers.
      self.state = jax.device_put(jax.tree_util.tree_map(jnp.array, state), self.state_sh)
      self.meta: dict[str, Any] = {"batches_consumed": 0}
    else:
      target = jax.tree_util.tree_map(
          lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), state,
          self.state_sh)
      self.state, self.meta = self.checkpointer.restore(target, latest)
      logging.info("Resumed from checkpoint %d (%d batches consumed).", latest,
                   self.meta["batches_consumed"])
    batch_sh = partitioning.data_sharding(self.mesh)
    self.batch_sh = batch_sh
    self.step_fn = step_lib.make_train_step(
        model, self.optimizer, state_sharding=self.state_sh, frozen_sharding=frozen_sh,
        batch_sharding=batch_sh, z_loss=cfg.z_loss, enable_dropout=cfg.enable_dropout)

    # Host-side step counter: reading `state.step` would block on the step just dispatched.
    self.step = int(jax.device_get(self.state.step))

  def save(self) -> None:
    self.checkpointer.save(self.state, self.meta)
    prompt = exportable_prompt(jax.device_get(self.state.params))
    if prompt is not None:
      checkpointing.export_prompt_npy(prompt, self.cfg.model_dir, self.step)
      # The same prompt as a PEFT prompt-tuning adapter, loadable onto the HF model.
      export.export_peft_adapter(
          prompt, pathlib.Path(self.cfg.model_dir) / "prompts" / f"peft_{self.step}")


def _check_finite(metrics: dict[str, float], step: int, run: _Run) -> None:
  if not math.isfinite(metrics["loss"]):
    last = run.checkpointer.latest_step()
    raise TrainingDivergedError(
        f"Loss became {metrics['loss']} at step {step}. Stopped without saving; the last good "
        f"checkpoint ({'none' if last is None else f'step {last}'}) is kept in "
        f"{run.checkpointer.directory}. Lower the learning rate or check the data, then "
        "rerun the same command to resume from it.")


def _progress(cfg: TrainerConfig, start: int):
  if not cfg.progress_bar:
    return None
  from tqdm import tqdm  # Local: only interactive runs draw a bar.
  return tqdm(total=cfg.train_steps, initial=start, unit="step", dynamic_ncols=True)


def train(model: nn.Module, frozen: Any, init_trainable: Any, *, rules: opt_lib.Rules,
          opt_config: opt_lib.OptimizerConfig, batches: BatchFactory, cfg: TrainerConfig,
          evaluator: Evaluator | None = None) -> TrainResult:
  """Trains (or resumes) to `cfg.train_steps`. See the module docstring."""
  run = _Run(model, frozen, init_trainable, rules, opt_config, cfg)
  writer = MetricsWriter(cfg.model_dir)
  data = batches(run.meta["batches_consumed"])
  bar = _progress(cfg, run.step)
  pending, last_train, last_eval, best = None, {}, {}, _read_best(cfg)
  t_log, examples = time.perf_counter(), 0
  while run.step < cfg.train_steps:
    batch = next(data)
    global_batch = {k: jax.make_array_from_process_local_data(run.batch_sh, np.asarray(v))
                    for k, v in batch.items()}  # Each process holds its slice of the batch.
    run.state, sums = run.step_fn(run.state, run.frozen, global_batch)
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
      last_eval = dict(evaluator(jax.device_get(run.state.params), step))
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
  return TrainResult(step=run.step, trainable=jax.device_get(run.state.params),
                     last_train_metrics=last_train, last_eval_metrics=last_eval, best=best)


def _read_best(cfg: TrainerConfig) -> dict[str, Any] | None:
  path = pathlib.Path(cfg.model_dir) / "best.json"
  return json.loads(path.read_text()) if path.exists() else None


def _update_best(cfg: TrainerConfig, best, step: int, metrics: Mapping[str, float], run: _Run):
  """Best-on-validation selection: records the step and exports its prompt as prompt_best."""
  if cfg.best_metric is None or cfg.best_metric not in metrics:
    return best
  value = float(metrics[cfg.best_metric])
  if best is not None and value <= best["value"]:
    return best
  best = {"step": step, "metric": cfg.best_metric, "value": value}
  checkpointing.write_json(pathlib.Path(cfg.model_dir) / "best.json", best)
  prompt = exportable_prompt(jax.device_get(run.state.params))
  if prompt is not None:
    checkpointing.export_prompt_npy(prompt, cfg.model_dir, "best")
  return best
