"""Runs as users launch them: train, evaluate and infer, configured with gin at the edges.

Each function is a plain, importable function; gin binds its arguments from the files in
`prompt_jax/gin/` (macros MODEL_DIR, MIXTURE_OR_TASK_NAME, ...). `prompt_jax.cli` only
parses flags and gin, then calls one of them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
import seqio

from prompt_jax import configurables
from prompt_jax.checks import (UserError, check_checkpoint_path, check_eval_args, check_heads,
                               check_mode, check_task,
                               positive_int, validate_lengths, validate_mesh, validate_prompt)
from prompt_jax.checkpoints import CheckpointError, load_pretrained
from prompt_jax.models.t5 import T5Transformer
from prompt_jax.prompts import Prompt, PromptBank, init_prompt_params, initializers
from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import evaluation
from prompt_jax.train import inputs
from prompt_jax.train import multihost
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import partitioning
from prompt_jax.train import paths
from prompt_jax.train import run_dir
from prompt_jax.train import trainer


@gin.configurable
def architecture(**overrides: Any) -> dict[str, Any]:
  """T5Config overrides bound by the gin model files (checked against the checkpoint)."""
  return overrides


_DTYPES = ("float32", "bfloat16")


@gin.configurable
def precision(param_dtype: str = "float32", dtype: str = "float32") -> dict[str, str]:
  """The frozen weights' dtype (PARAM_DTYPE) and the activation dtype (ACTIVATION_DTYPE).

  bfloat16 weights halve the frozen model's memory (T5 1.1 XXL on 16 GiB cores); the
  trainable prompt stays float32. On CPU keep float32 (no native bf16 matmul).
  """
  for name, value in (("PARAM_DTYPE", param_dtype), ("ACTIVATION_DTYPE", dtype)):
    if value not in _DTYPES:
      raise UserError(f"{name} must be one of {_DTYPES}, got {value!r} (--gin.{name}=...).")
  return {"param_dtype": param_dtype, "dtype": dtype}


@gin.configurable
def mesh_layout(dcn_mesh_shape: Sequence[int] | None = None) -> tuple[int, ...] | None:
  """Where the processes of a multi-process job sit on the mesh (DCN_MESH_SHAPE).

  None (the default): devices in id order, so processes fill `data` first. `(p_data,
  p_model)`: p_data processes along `data`, p_model along `model` (their product is the
  process count); see `partitioning.make_mesh`. Not part of a run's identity: a run saved
  by two processes resumes on one (with DCN_MESH_SHAPE unset), and vice versa.
  """
  if dcn_mesh_shape is None:
    return None
  if not isinstance(dcn_mesh_shape, (list, tuple)):
    raise UserError(f"DCN_MESH_SHAPE={dcn_mesh_shape!r} must be None or (processes along "
                    "data, processes along model), e.g. --gin.DCN_MESH_SHAPE='(1, 2)'.")
  return tuple(dcn_mesh_shape)


def _precision_identity() -> dict[str, Any]:
  """Non-default precision settings, for the run's identity (defaults leave it as before)."""
  chosen = precision()
  return {} if chosen == {"param_dtype": "float32", "dtype": "float32"} else {
      "precision": chosen}


def frozen_shardings(mesh: jax.sharding.Mesh):
  """`load_pretrained`'s `sharding`: each frozen weight straight onto its mesh sharding."""
  from prompt_jax.train import builder
  return lambda model: partitioning.shardings_for(builder.abstract_params(model), mesh)


def _vocabulary(task_name: str) -> seqio.Vocabulary:
  return seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary


def write_config(model_dir: str) -> None:
  """Writes the gin config of this run to `<model_dir>/config.gin`."""
  if not multihost.is_primary():
    return
  path = paths.as_path(model_dir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.gin").write_text(gin.config_str())


def _load(path: str, overrides: Mapping[str, Any], mesh: jax.sharding.Mesh | None = None):
  """(model, frozen params): on `mesh`'s shardings (each process reads only its devices'
  slices), in the chosen precision."""
  check_checkpoint_path(path)
  chosen = precision()
  sharding = frozen_shardings(mesh) if mesh is not None else None
  try:
    model, params = load_pretrained(path, sharding=sharding,
                                    param_dtype=jax.numpy.dtype(chosen["param_dtype"]),
                                    **overrides)
    return T5Transformer(model.config.replace(dtype=chosen["dtype"])), params
  except CheckpointError:
    raise
  except (ValueError, TypeError) as e:  # Gin architecture.* bindings that do not fit.
    raise UserError(f"{e} (the architecture.* values come from the models/ and "
                    "models/sizes/ gin files: pick the ones that match the checkpoint).") from None


def make_mesh(num_partitions: int) -> jax.sharding.Mesh:
  """The run's mesh (NUM_PARTITIONS, DCN_MESH_SHAPE), logged once per process."""
  mesh = partitioning.make_mesh(num_partitions, dcn_mesh_shape=mesh_layout())
  multihost.log_topology(mesh)
  return mesh


def _resuming(model_dir: str) -> bool:
  ckpts = paths.as_path(model_dir) / "checkpoints"
  return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())


def default_param_groups(prompt: nn.Module | None) -> opt_lib.ParamGroups:
  """Prompt tuning (only `prompt/` trains) with a prompt module; model tuning without one.

  The settings come from `optim.OptimizerConfig`, so its gin bindings (LEARNING_RATE, ...)
  apply here too.
  """
  rules = opt_lib.PROMPT_TUNING_RULES if prompt is not None else opt_lib.MODEL_TUNING_RULES
  return opt_lib.ParamGroups(rules, {opt_lib.TRAINABLE: configurables.OptimizerConfig()})


def fit_prompt_to_tasks(prompt: nn.Module | None, names: Sequence[str]) -> nn.Module | None:
  """A per-task module (`num_tasks` field) gets the mixture's task count when it is 0.

  A module with a `task_names` field left empty gets the mixture's names (task-id order).
  """
  if getattr(prompt, "task_names", None) == ():
    prompt = prompt.clone(task_names=tuple(names))
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
                extra_frozen: Mapping[str, Any] | None = None,
                mesh: jax.sharding.Mesh | None = None) -> Built:
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
    mesh: load the frozen weights straight onto this mesh's shardings (None: host arrays).

  Returns:
    A `Built`; `trainable` holds every leaf of a non-frozen group, `frozen` the rest.
  """
  groups = groups or default_param_groups(prompt)
  names = inputs.task_names(task_name)
  base, pretrained = _load(checkpoint, architecture(), mesh)
  prompt = fit_prompt_to_tasks(prompt, names)
  params = dict(pretrained)
  if prompt is not None:  # The initializers read the table on the host (gathered).
    embedding = np.asarray(multihost.to_host(pretrained["token_embedder"]["embedding"]),
                           np.float32)
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
  if multihost.is_primary():
    checkpointing.write_json(paths.as_path(model_dir) / "tasks.json",
                             {"task_names": list(names)})


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
          seed: int = 0, allow_replicated_heads: bool = False,
          tfds_data_dir: str | None = None) -> trainer.TrainResult:
  """Trains a prompt module (`PROMPT`, from a gin/methods/ file) on a frozen T5.

  `prompt=None` with the default groups is model tuning (every weight trains). What a
  method needs beyond its module (its parameter groups, loss terms) comes from its gin file
  through `param_groups` / `loss_terms`.
  """
  multihost.initialize()  # Before anything below starts the backend (a no-op in 1 process).
  check_task(mixture_or_task_name, tfds_data_dir)
  # Everything checkable without a model is checked before anything is loaded or written.
  positive_int("TRAIN_STEPS", train_steps)
  positive_int("CHECKPOINT_PERIOD", checkpoint_period)
  positive_int("EVAL_PERIOD", eval_period, zero_ok=True)
  if max_eval_examples is not None:
    positive_int("train.max_eval_examples", max_eval_examples)
  validate_lengths(task_feature_lengths)
  check_checkpoint_path(initial_checkpoint_path)
  validate_mesh(num_partitions, batch_size, mesh_layout())
  validate_prompt(prompt)
  if "num_heads" in architecture():  # Known from the size gin file: check before loading.
    check_heads(architecture()["num_heads"], num_partitions, allow_replicated_heads)
  check_mode(eval_mode)
  groups = param_groups or default_param_groups(prompt)
  identity = {"mixture_or_task_name": mixture_or_task_name,
              "initial_checkpoint_path": str(initial_checkpoint_path),
              "architecture": run_dir.describe(architecture()),
              "task_feature_lengths": run_dir.describe(task_feature_lengths),
              "batch_size": batch_size, "seed": seed, "prompt": run_dir.describe(prompt),
              "param_rules": run_dir.describe(groups.rules),
              "loss_terms": [name for name, _ in loss_terms], **_precision_identity()}
  mesh = make_mesh(num_partitions)
  with run_dir.RunDirLock(model_dir):
    run_dir.check_identity(model_dir, identity, resuming=_resuming(model_dir))
    write_config(model_dir)
    built = build_model(initial_checkpoint_path, prompt, mixture_or_task_name,
                        groups=groups, loss_terms=loss_terms, seed=seed, mesh=mesh)
    check_heads(built.adapter.config.num_heads, num_partitions, allow_replicated_heads)
    write_task_names(model_dir, built.task_names)
    return _train_built(built, model_dir, mixture_or_task_name, task_feature_lengths,
                        train_steps, batch_size, num_partitions, checkpoint_period,
                        eval_period, eval_split, eval_mode, max_eval_examples, best_metric,
                        seed, mesh)


def _owns_model_dir(command: str):
  """Eval / infer: refuse a training run's dir, hold the dir's lock while running."""

  def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      multihost.initialize()  # Before the lock asks which process this is.
      model_dir = kwargs.get("model_dir")
      if model_dir:
        run_dir.refuse_training_dir(model_dir, command)
        with run_dir.RunDirLock(model_dir):
          return fn(*args, **kwargs)
      return fn(*args, **kwargs)
    return wrapper

  return decorate


def _train_built(built: Built, model_dir, mixture_or_task_name, task_feature_lengths,
                 train_steps, batch_size, num_partitions, checkpoint_period, eval_period,
                 eval_split, eval_mode, max_eval_examples, best_metric, seed, mesh=None
                 ) -> trainer.TrainResult:
  """The training part of `train`, once the run dir is owned and the model built."""
  buckets = configurables.LengthBuckets()
  evaluator = evaluation.Evaluator(
      built.adapter, built.frozen, built.task_names, split=eval_split,
      feature_lengths=task_feature_lengths, batch_size=batch_size,
      max_examples=max_eval_examples, mode=eval_mode, model_dir=model_dir, mesh=mesh,
      buckets=buckets)
  batches = inputs.batch_factory(mixture_or_task_name, split="train",
                                 task_feature_lengths=task_feature_lengths,
                                 batch_size=batch_size, seed=seed, buckets=buckets)
  cfg = configurables.TrainerConfig(model_dir=model_dir, train_steps=train_steps,
                                    checkpoint_period=checkpoint_period,
                                    eval_period=eval_period, num_partitions=num_partitions,
                                    seed=seed, best_metric=best_metric,
                                    task_names=tuple(built.task_names))
  return trainer.train(built.adapter, built.frozen, built.trainable, groups=built.groups,
                       batches=batches, cfg=cfg, evaluator=evaluator, mesh=mesh)


def _prompted_from_file(checkpoint: str, prompt_file: str, placement: str,
                        task_name: str, offset_file: str | None = None, mesh=None):
  """(adapter, frozen, trainable, task names) for `pretrained + exported prompt file`.

  A [P, D] file is a plain `Prompt`; a [T, P, D] file (a per-task export) a `PromptBank`
  whose row t serves task id t of the mixture. With `offset_file` (an exported
  `input_offset_<step>.npy` [M, D], e.g. of a DePT / EPT-style run) the [P, D] prompt comes
  with that fixed offset on the input embeddings (`OffsetPrompt`).
  """
  if not prompt_file:
    raise UserError("PROMPT_FILE is not set (--gin.PROMPT_FILE=path/to/prompt.npy).")
  if not paths.as_path(prompt_file).exists():
    raise UserError(f"Prompt file {prompt_file} does not exist.")
  array = initializers.load_npy_prompt(prompt_file)
  names = inputs.task_names(task_name)
  base, frozen = _load(checkpoint, architecture(), mesh)
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
  if not paths.as_path(offset_file).exists():
    raise UserError(f"Offset file {offset_file} does not exist.")
  offset = initializers.load_npy_prompt(offset_file)
  if array.ndim != 2 or offset.ndim != 2 or offset.shape[1] != d or placement != "prefix":
    raise UserError(f"OFFSET_FILE needs a [P, {d}] prompt at the prefix placement and an "
                    f"[L_max, {d}] offset; got prompt {array.shape}, offset {offset.shape}, "
                    f"placement {placement!r}.")
  trainable["prompt"][OFFSET_EXPORT] = np.asarray(offset, np.float32)
  return OffsetPrompt(array.shape[0], offset.shape[0]), trainable


@gin.configurable
@_owns_model_dir("eval")
def evaluate(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             initial_checkpoint_path: str = gin.REQUIRED, prompt_file: str | None = None,
             split: str = "validation", mode: str = "generation", batch_size: int = 32,
             max_examples: int | None = None, placement: str = "prefix",
             tfds_data_dir: str | None = None, offset_file: str | None = None,
             prompt_files: str | Sequence[str] | None = None, ensemble_vote: str = "majority",
             num_partitions: int = 1) -> dict[str, float]:
  """Evaluates `pretrained checkpoint + prompt file`; writes metrics.jsonl and inference.

  `offset_file`: the run's exported input offset, for methods that export one.
  `prompt_files` (a list of .npy files or a dir of them, instead of `prompt_file`): a
  one-pass ensemble (`prompt_jax.train.ensemble`) voting by `ensemble_vote`; the metrics
  hold the ensemble's, each member's, their mean and their best.
  `num_partitions`: the mesh's model-parallel size (the frozen model loads sharded).
  """
  check_task(mixture_or_task_name, tfds_data_dir)
  check_eval_args(mixture_or_task_name, split, task_feature_lengths, batch_size, max_examples,
                   mode)
  _check_prompt_args(prompt_file, prompt_files, offset_file, ensemble_vote)
  mesh = _eval_mesh(num_partitions, batch_size)
  write_config(model_dir)
  if prompt_files is not None:
    files, ens = _ensemble_evaluator(
        initial_checkpoint_path, prompt_files, placement, mixture_or_task_name, mesh,
        split=split, feature_lengths=task_feature_lengths, batch_size=batch_size,
        max_examples=max_examples, mode=mode, vote=ensemble_vote)
    metrics, _ = ens(model_dir, "eval")
    _write_eval_metrics(model_dir, metrics)
    if multihost.is_primary():
      from prompt_jax.train import checkpointing
      checkpointing.write_json(paths.as_path(model_dir) / "ensemble.json",
                               {"prompt_files": [str(f) for f in files],
                                "vote": ensemble_vote, "mode": mode, "metrics": metrics})
    return metrics
  model, frozen, trainable, names = _prompted_from_file(
      initial_checkpoint_path, prompt_file, placement, mixture_or_task_name, offset_file, mesh)
  ev = evaluation.Evaluator(model, frozen, names, split=split,
                            feature_lengths=task_feature_lengths, batch_size=batch_size,
                            max_examples=max_examples, mode=mode, model_dir=model_dir,
                            mesh=mesh, buckets=configurables.LengthBuckets())
  metrics = ev(trainable, "eval")
  _write_eval_metrics(model_dir, metrics)
  return metrics


def _write_eval_metrics(model_dir: str, metrics: Mapping[str, float]) -> None:
  from prompt_jax.train.metrics_writer import MetricsWriter
  writer = MetricsWriter(model_dir, enabled=multihost.is_primary())
  writer.write(0, "eval", dict(metrics))
  writer.close()
  logging.info("Eval metrics: %s", metrics)


def _check_prompt_args(prompt_file: str | None, prompt_files: Any, offset_file: str | None,
                       vote: str) -> None:
  """One prompt (PROMPT_FILE) or an ensemble (PROMPT_FILES), found before loading a model."""
  from prompt_jax.train import ensemble as ensemble_lib
  if prompt_file and prompt_files is not None:
    raise UserError("Set PROMPT_FILE (one prompt) or PROMPT_FILES (an ensemble), not both.")
  if not prompt_file and prompt_files is None:
    raise UserError("PROMPT_FILE is not set (--gin.PROMPT_FILE=path/to/prompt.npy; or "
                    "--gin.PROMPT_FILES=[...] / a dir of .npy files for an ensemble).")
  if prompt_files is not None:
    if offset_file:
      raise UserError("OFFSET_FILE does not combine with PROMPT_FILES: an ensemble's members "
                      "are plain [P, D] prompts; evaluate offset runs one by one.")
    if vote not in ensemble_lib.VOTES:
      raise UserError(f"ENSEMBLE_VOTE must be one of {ensemble_lib.VOTES}, got {vote!r}.")
    ensemble_lib.load_members(ensemble_lib.resolve_prompt_files(prompt_files))


def _ensemble_evaluator(checkpoint: str, prompt_files: Any, placement: str, task_name: str,
                        mesh: jax.sharding.Mesh, **kwargs: Any):
  """(member files, `EnsembleEvaluator`) for `pretrained + PROMPT_FILES`, loaded onto and
  run on `mesh` as a single prompt's eval is."""
  from prompt_jax.train import ensemble as ensemble_lib
  files = ensemble_lib.resolve_prompt_files(prompt_files)
  members = ensemble_lib.load_members(files)
  names = inputs.task_names(task_name)
  base, frozen = _load(checkpoint, architecture(), mesh)
  d = base.config.d_model
  if members.shape[-1] != d or (members.ndim == 4 and members.shape[1] != len(names)):
    raise UserError(f"The ensemble's prompt files have shape {members.shape[1:]}; the model "
                    f"needs [P, {d}] (or [{len(names)}, P, {d}] for a per-task prompt of "
                    f"{task_name}).")
  logging.info("Ensemble of %d prompts in one pass: %s", len(files), [str(f) for f in files])
  return files, ensemble_lib.EnsembleEvaluator(base.config, frozen, members, names,
                                               placement=placement, mesh=mesh, **kwargs)


@gin.configurable
@_owns_model_dir("infer")
def infer(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          initial_checkpoint_path: str = gin.REQUIRED, prompt_file: str | None = None,
          split: str = "test", batch_size: int = 32, max_examples: int | None = None,
          placement: str = "prefix", tfds_data_dir: str | None = None,
          offset_file: str | None = None, prompt_files: str | Sequence[str] | None = None,
          ensemble_vote: str = "majority", num_partitions: int = 1) -> list[Any]:
  """Greedy predictions of `pretrained checkpoint + prompt file` (+ offset) as JSONL.

  With `prompt_files` the one-pass ensemble's voted `prediction` and every member's
  (`members`) per line.
  """
  check_task(mixture_or_task_name, tfds_data_dir)
  check_eval_args(mixture_or_task_name, split, task_feature_lengths, batch_size, max_examples)
  _check_prompt_args(prompt_file, prompt_files, offset_file, ensemble_vote)
  mesh = _eval_mesh(num_partitions, batch_size)
  write_config(model_dir)
  if prompt_files is not None:
    from prompt_jax.train import ensemble as ensemble_lib
    _, ens = _ensemble_evaluator(
        initial_checkpoint_path, prompt_files, placement, mixture_or_task_name, mesh,
        split=split, feature_lengths=task_feature_lengths, batch_size=batch_size,
        max_examples=max_examples, vote=ensemble_vote, with_metrics=False)
    results = {task: ens.evaluate_task(task) for task in ens.examples}  # Every process.
    return [ensemble_lib.write_inference(model_dir, task, "infer", ens.examples[task], result)
            for task, result in results.items() if multihost.is_primary()]
  model, frozen, trainable, names = _prompted_from_file(
      initial_checkpoint_path, prompt_file, placement, mixture_or_task_name, offset_file, mesh)
  written = []
  for task in names:
    ev = evaluation.Evaluator(model, frozen, [task], split=split,
                              feature_lengths=task_feature_lengths, batch_size=batch_size,
                              max_examples=max_examples,
                              task_ids={task: names.index(task)}, mesh=mesh,
                              buckets=configurables.LengthBuckets())
    preds = ev.predict(trainable, task)
    if multihost.is_primary():
      written.append(evaluation.write_inference(model_dir, task, "infer", ev.examples[task],
                                                preds))
  return written


def _eval_mesh(num_partitions: Any, batch_size: int) -> jax.sharding.Mesh:
  """The eval / infer mesh (its batches split over `data`, as in training)."""
  validate_mesh(num_partitions, batch_size, mesh_layout())
  return make_mesh(num_partitions)
