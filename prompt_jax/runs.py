"""Runs as users launch them: train, evaluate and infer, configured with gin at the edges.

Each function is a plain, importable function; gin binds its arguments from the files in
`prompt_jax/gin/` (macros MODEL_DIR, MIXTURE_OR_TASK_NAME, ...). `prompt_jax.cli` only
parses flags and gin, then calls one of them.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
import seqio

from prompt_jax import configurables
from prompt_jax.checkpoints import load_pretrained
from prompt_jax.models.t5 import T5Transformer
from prompt_jax.prompts import Prompt, PromptBank, init_prompt_params, initializers
from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import evaluation
from prompt_jax.train import inputs
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import trainer


class UserError(Exception):
  """A configuration or input problem the user can fix; the CLI prints it without a trace."""


@gin.configurable
def architecture(**overrides: Any) -> dict[str, Any]:
  """T5Config overrides bound by the gin model files (checked against the checkpoint)."""
  return overrides


def _vocabulary(task_name: str) -> seqio.Vocabulary:
  return seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary


def write_config(model_dir: str) -> None:
  """Writes the gin config of this run to `<model_dir>/config.gin`."""
  path = pathlib.Path(model_dir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.gin").write_text(gin.config_str())


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


def _load(path: str, overrides: Mapping[str, Any]):
  if not path:
    raise UserError("INITIAL_CHECKPOINT_PATH is not set (--gin.INITIAL_CHECKPOINT_PATH=...).")
  if not str(path).startswith("gs://") and not pathlib.Path(path).exists():
    raise UserError(f"Checkpoint {path} does not exist; set INITIAL_CHECKPOINT_PATH to a T5X "
                    "checkpoint dir or an HF model dir.")
  return load_pretrained(path, **overrides)


def default_param_groups(prompt: nn.Module | None) -> opt_lib.ParamGroups:
  """Prompt tuning (only `prompt/` trains) with a prompt module; model tuning without one.

  The settings come from `optim.OptimizerConfig`, so its gin bindings (LEARNING_RATE, ...)
  apply here too.
  """
  rules = opt_lib.PROMPT_TUNING_RULES if prompt is not None else opt_lib.MODEL_TUNING_RULES
  return opt_lib.ParamGroups(rules, {opt_lib.TRAINABLE: configurables.OptimizerConfig()})


def fit_prompt_to_tasks(prompt: nn.Module | None, names: Sequence[str]) -> nn.Module | None:
  """A per-task module (`num_tasks` field) gets the mixture's task count when it is 0."""
  n = getattr(prompt, "num_tasks", None)
  if n is None:
    return prompt
  if n == 0:
    return prompt.clone(num_tasks=len(names))
  if n != len(names):
    raise UserError(f"The prompt module has num_tasks={n} but the mixture has {len(names)} "
                    f"tasks {list(names)}; leave num_tasks unset (0) to take the mixture's.")
  return prompt


@dataclasses.dataclass
class Built:
  """A model ready to train or evaluate: adapter, frozen params and initial trainables."""
  adapter: adapter_lib.ModelAdapter
  frozen: Any
  trainable: Any
  groups: opt_lib.ParamGroups
  task_names: list[str]


def build_model(checkpoint: str, prompt: nn.Module | None, task_name: str, *,
                groups: opt_lib.ParamGroups | None = None,
                loss_terms: Sequence[tuple[str, Any]] = (), seed: int = 0,
                extra_frozen: Mapping[str, Any] | None = None) -> Built:
  """Loads the checkpoint, binds the prompt's initializers to it, initialises, splits.

  Args:
    checkpoint: the pretrained T5X / HF checkpoint.
    prompt: the prompt module (None: model tuning, every weight is in the groups' rules).
    task_name: the task or mixture (its vocabulary for label / text initializers, its task
      names for per-task modules).
    groups: parameter groups (default: `default_param_groups(prompt)`).
    loss_terms: (name, LossTerm) pairs for the adapter.
    seed: the prompt initialisation key.
    extra_frozen: more frozen parameters (e.g. a teacher prompt read by a loss term).

  Returns:
    A `Built`; `trainable` holds every leaf of a non-frozen group, `frozen` the rest.
  """
  groups = groups or default_param_groups(prompt)
  names = inputs.task_names(task_name)
  base, pretrained = _load(checkpoint, architecture())
  prompt = fit_prompt_to_tasks(prompt, names)
  params = dict(pretrained)
  if prompt is not None:
    embedding = np.asarray(pretrained["token_embedder"]["embedding"])
    try:
      prompt = initializers.bind_initializers(
          prompt, initializers.Pretrained(embedding, _vocabulary(task_name)))
      prompt_params = init_prompt_params(prompt, jax.random.PRNGKey(seed), base.config.d_model)
    except (ValueError, FileNotFoundError) as e:
      raise UserError(f"Prompt initialisation failed: {e}") from None
    params["prompt"] = prompt_params
  params.update(extra_frozen or {})
  model = T5Transformer(base.config, prompt=prompt)
  try:
    labels = groups.labels(params)
  except ValueError as e:
    raise UserError(str(e)) from None
  trainable, frozen = opt_lib.split_params(params, labels)
  adapter = adapter_lib.ModelAdapter(model, loss_terms=tuple(loss_terms))
  return Built(adapter, frozen, trainable, groups, names)


def write_task_names(model_dir: str, names: Sequence[str]) -> None:
  """`MODEL_DIR/tasks.json`: the task-id order (a mixture's sorted task names)."""
  from prompt_jax.train import checkpointing
  checkpointing.write_json(pathlib.Path(model_dir) / "tasks.json", {"task_names": list(names)})


@gin.configurable
def train(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, initial_checkpoint_path: str = gin.REQUIRED,
          prompt: nn.Module | None = gin.REQUIRED,
          param_groups: opt_lib.ParamGroups | None = None,
          loss_terms: Sequence[tuple[str, Any]] = (), batch_size: int = 32,
          num_partitions: int = 1, checkpoint_period: int = 1000, eval_period: int = 1000,
          eval_split: str = "validation", eval_mode: str = "generation",
          max_eval_examples: int | None = None, best_metric: str | None = None,
          seed: int = 0, tfds_data_dir: str | None = None) -> trainer.TrainResult:
  """Trains a prompt module (`PROMPT`, from a gin/methods/ file) on a frozen T5.

  `prompt=None` with the default groups is model tuning (every weight trains). What a
  method needs beyond its module (its parameter groups, loss terms) comes from its gin file
  through `param_groups` / `loss_terms`.
  """
  check_task(mixture_or_task_name, tfds_data_dir)
  write_config(model_dir)
  built = build_model(initial_checkpoint_path, prompt, mixture_or_task_name,
                      groups=param_groups, loss_terms=loss_terms, seed=seed)
  write_task_names(model_dir, built.task_names)
  evaluator = evaluation.Evaluator(
      built.adapter, built.frozen, built.task_names, split=eval_split,
      feature_lengths=task_feature_lengths, batch_size=batch_size,
      max_examples=max_eval_examples, mode=eval_mode, model_dir=model_dir)
  batches = inputs.batch_factory(mixture_or_task_name, split="train",
                                 task_feature_lengths=task_feature_lengths,
                                 batch_size=batch_size, seed=seed)
  cfg = trainer.TrainerConfig(model_dir=model_dir, train_steps=train_steps,
                              checkpoint_period=checkpoint_period, eval_period=eval_period,
                              num_partitions=num_partitions, seed=seed, best_metric=best_metric,
                              task_names=tuple(built.task_names))
  return trainer.train(built.adapter, built.frozen, built.trainable, groups=built.groups,
                       batches=batches, cfg=cfg, evaluator=evaluator)


def _prompted_from_file(checkpoint: str, prompt_file: str, placement: str,
                        task_name: str, offset_file: str | None = None):
  """(adapter, frozen, trainable, task names) for `pretrained + exported prompt file`.

  A [P, D] file is a plain `Prompt`; a [T, P, D] file (a per-task export) a `PromptBank`
  whose row t serves task id t of the mixture. With `offset_file` (an exported
  `input_offset_<step>.npy` [M, D], e.g. of a DePT / EPT-style run) the [P, D] prompt comes
  with that fixed offset on the input embeddings (`OffsetPrompt`).
  """
  if not prompt_file:
    raise UserError("PROMPT_FILE is not set (--gin.PROMPT_FILE=path/to/prompt.npy).")
  if not pathlib.Path(prompt_file).exists():
    raise UserError(f"Prompt file {prompt_file} does not exist.")
  array = initializers.load_npy_prompt(prompt_file)
  names = inputs.task_names(task_name)
  base, frozen = _load(checkpoint, architecture())
  d = base.config.d_model
  if array.ndim == 2 and array.shape[1] == d:
    prompt = Prompt(array.shape[0], placement=placement)
  elif array.ndim == 3 and array.shape[2] == d and array.shape[0] == len(names):
    prompt = PromptBank(array.shape[0], array.shape[1], placement=placement)
  else:
    raise UserError(f"Prompt file {prompt_file} has shape {array.shape}; the model needs "
                    f"[P, {d}] (or [{len(names)}, P, {d}] for a per-task prompt of "
                    f"{task_name}).")
  trainable = {"prompt": {"prompt": np.asarray(array, np.float32)}}
  if offset_file:
    prompt, trainable = _with_offset(offset_file, array, d, placement, trainable)
  adapter = adapter_lib.ModelAdapter(T5Transformer(base.config, prompt=prompt))
  return adapter, frozen, trainable, names


def _with_offset(offset_file: str, array: np.ndarray, d: int, placement: str,
                 trainable: dict) -> tuple[nn.Module, dict]:
  """An `OffsetPrompt` (prompt [P, D] + fixed input offset [M, D]) and its parameters."""
  from prompt_jax.prompts.ept import OFFSET_EXPORT, OffsetPrompt
  if not pathlib.Path(offset_file).exists():
    raise UserError(f"Offset file {offset_file} does not exist.")
  offset = initializers.load_npy_prompt(offset_file)
  if array.ndim != 2 or offset.ndim != 2 or offset.shape[1] != d or placement != "prefix":
    raise UserError(f"OFFSET_FILE needs a [P, {d}] prompt at the prefix placement and an "
                    f"[L_max, {d}] offset; got prompt {array.shape}, offset {offset.shape}, "
                    f"placement {placement!r}.")
  trainable["prompt"][OFFSET_EXPORT] = np.asarray(offset, np.float32)
  return OffsetPrompt(array.shape[0], offset.shape[0]), trainable


@gin.configurable
def evaluate(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             initial_checkpoint_path: str = gin.REQUIRED, prompt_file: str = gin.REQUIRED,
             split: str = "validation", mode: str = "generation", batch_size: int = 32,
             max_examples: int | None = None, placement: str = "prefix",
             tfds_data_dir: str | None = None, offset_file: str | None = None
             ) -> dict[str, float]:
  """Evaluates `pretrained checkpoint + prompt file`; writes metrics.jsonl and inference.

  `offset_file`: the run's exported input offset, for methods that export one.
  """
  check_task(mixture_or_task_name, tfds_data_dir)
  write_config(model_dir)
  model, frozen, trainable, names = _prompted_from_file(
      initial_checkpoint_path, prompt_file, placement, mixture_or_task_name, offset_file)
  ev = evaluation.Evaluator(model, frozen, names, split=split,
                            feature_lengths=task_feature_lengths, batch_size=batch_size,
                            max_examples=max_examples, mode=mode, model_dir=model_dir)
  metrics = ev(trainable, "eval")
  from prompt_jax.train.metrics_writer import MetricsWriter
  writer = MetricsWriter(model_dir)
  writer.write(0, "eval", metrics)
  writer.close()
  logging.info("Eval metrics: %s", metrics)
  return metrics


@gin.configurable
def infer(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          initial_checkpoint_path: str = gin.REQUIRED, prompt_file: str = gin.REQUIRED,
          split: str = "test", batch_size: int = 32, max_examples: int | None = None,
          placement: str = "prefix", tfds_data_dir: str | None = None,
          offset_file: str | None = None) -> list[pathlib.Path]:
  """Greedy predictions of `pretrained checkpoint + prompt file` (+ offset) as JSONL."""
  check_task(mixture_or_task_name, tfds_data_dir)
  write_config(model_dir)
  model, frozen, trainable, names = _prompted_from_file(
      initial_checkpoint_path, prompt_file, placement, mixture_or_task_name, offset_file)
  paths = []
  for task in names:
    ev = evaluation.Evaluator(model, frozen, [task], split=split,
                              feature_lengths=task_feature_lengths, batch_size=batch_size,
                              max_examples=max_examples,
                              task_ids={task: names.index(task)})
    preds = ev.predict(trainable, task)
    paths.append(evaluation.write_inference(model_dir, task, "infer", ev.examples[task], preds))
  return paths
