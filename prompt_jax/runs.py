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

import gin
import jax
import numpy as np
import seqio

from prompt_jax.checkpoints import load_pretrained
from prompt_jax.models.t5 import T5Transformer
from prompt_jax.prompts import Prompt, init_prompt_params, initializers
from prompt_jax.train import evaluation
from prompt_jax.train import inputs
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import trainer

PROMPT_INITS = ("random_uniform", "reference_uniform", "sampled_vocab", "class_labels",
                "from_string", "from_file")


class UserError(Exception):
  """A configuration or input problem the user can fix; the CLI prints it without a trace."""


@gin.configurable
def architecture(**overrides: Any) -> dict[str, Any]:
  """T5Config overrides bound by the gin model files (checked against the checkpoint)."""
  return overrides


@gin.configurable
def prompt_config(length: int = 100, init: str = "sampled_vocab", file: str | None = None,
                  class_labels: Sequence[str] | None = None, text: str | None = None,
                  placement: str = "prefix", population: int = 5000) -> dict[str, Any]:
  """Prompt settings bound by `gin/prompts/*.gin` (PROMPT_LENGTH, PROMPT_FILE, CLASS_LABELS)."""
  if init not in PROMPT_INITS:
    raise UserError(f"Unknown prompt init {init!r}; use one of {PROMPT_INITS}.")
  return dict(length=length, init=init, file=file, class_labels=class_labels, text=text,
              placement=placement, population=population)


def _vocabulary(task_name: str) -> seqio.Vocabulary:
  return seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary


def make_initializer(settings: Mapping[str, Any], embedding: np.ndarray,
                     vocabulary: seqio.Vocabulary | None) -> initializers.Initializer:
  """The prompt initializer named by `settings["init"]`, built on the pretrained embedding."""
  kind = settings["init"]
  sampled = initializers.sampled_vocab(embedding, settings["population"])
  if kind == "random_uniform":
    return initializers.random_uniform()
  if kind == "reference_uniform":
    return initializers.reference_uniform()
  if kind == "sampled_vocab":
    return sampled
  if kind == "from_file":
    if not settings["file"]:
      raise UserError("prompt init 'from_file' needs PROMPT_FILE (--gin.PROMPT_FILE=...).")
    return initializers.from_npy(settings["file"])
  if vocabulary is None:
    raise UserError(f"prompt init {kind!r} needs the task's vocabulary.")
  if kind == "class_labels":
    if not settings["class_labels"]:
      raise UserError("prompt init 'class_labels' needs CLASS_LABELS, e.g. "
                      "--gin.CLASS_LABELS=\"['entailment', 'not_entailment']\".")
    ids = [vocabulary.encode(label) for label in settings["class_labels"]]
    return initializers.class_labels(embedding, ids, sampled)
  if not settings["text"]:
    raise UserError("prompt init 'from_string' needs prompt_config.text.")
  return initializers.from_string(embedding, vocabulary.encode(settings["text"]), sampled)


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


def build_prompted_model(checkpoint: str, settings: Mapping[str, Any], task_name: str,
                         seed: int = 0):
  """(model with prompt, frozen params, initial prompt params) for prompt tuning."""
  base, frozen = _load(checkpoint, architecture())
  embedding = np.asarray(frozen["token_embedder"]["embedding"])
  init = make_initializer(settings, embedding, _vocabulary(task_name))
  prompt = Prompt(settings["length"], initializer=init, placement=settings["placement"])
  model = T5Transformer(base.config, prompt=prompt)
  trainable = {"prompt": init_prompt_params(prompt, jax.random.PRNGKey(seed),
                                            base.config.d_model)}
  return model, frozen, trainable


@gin.configurable
def train(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, initial_checkpoint_path: str = gin.REQUIRED,
          batch_size: int = 32, mode: str = "prompt", num_partitions: int = 1,
          checkpoint_period: int = 1000, eval_period: int = 1000,
          eval_split: str = "validation", eval_mode: str = "generation",
          max_eval_examples: int | None = None, learning_rate: float | None = None,
          best_metric: str | None = None, seed: int = 0, tfds_data_dir: str | None = None
          ) -> trainer.TrainResult:
  """Prompt tuning (mode="prompt") or model tuning (mode="model") of a pretrained T5."""
  check_task(mixture_or_task_name, tfds_data_dir)
  write_config(model_dir)
  if mode == "prompt":
    model, frozen, trainable = build_prompted_model(
        initial_checkpoint_path, prompt_config(), mixture_or_task_name, seed)
    rules, opt_cfg = opt_lib.PROMPT_TUNING_RULES, opt_lib.OptimizerConfig()
  elif mode == "model":
    model, trainable = _load(initial_checkpoint_path, architecture())
    frozen, rules, opt_cfg = {}, opt_lib.MODEL_TUNING_RULES, opt_lib.MODEL_TUNING_OPTIMIZER
  else:
    raise UserError(f"mode must be 'prompt' or 'model', got {mode!r}.")
  if learning_rate is not None:
    opt_cfg = dataclasses.replace(opt_cfg, learning_rate=learning_rate)
  evaluator = evaluation.Evaluator(
      model, frozen, evaluation.task_names(mixture_or_task_name), split=eval_split,
      feature_lengths=task_feature_lengths, batch_size=batch_size,
      max_examples=max_eval_examples, mode=eval_mode, model_dir=model_dir)
  batches = inputs.batch_factory(mixture_or_task_name, split="train",
                                 task_feature_lengths=task_feature_lengths,
                                 batch_size=batch_size, seed=seed)
  cfg = trainer.TrainerConfig(model_dir=model_dir, train_steps=train_steps,
                              checkpoint_period=checkpoint_period, eval_period=eval_period,
                              num_partitions=num_partitions, seed=seed, best_metric=best_metric)
  return trainer.train(model, frozen, trainable, rules=rules, opt_config=opt_cfg,
                       batches=batches, cfg=cfg, evaluator=evaluator)


def _prompted_from_file(checkpoint: str, prompt_file: str):
  if not prompt_file:
    raise UserError("PROMPT_FILE is not set (--gin.PROMPT_FILE=path/to/prompt.npy).")
  if not pathlib.Path(prompt_file).exists():
    raise UserError(f"Prompt file {prompt_file} does not exist.")
  base, frozen = _load(checkpoint, architecture())
  array = initializers.load_npy_prompt(prompt_file)
  if array.ndim != 2 or array.shape[1] != base.config.d_model:
    raise UserError(f"Prompt file {prompt_file} has shape {array.shape}; the model needs "
                    f"[P, {base.config.d_model}].")
  prompt = Prompt(array.shape[0], initializer=initializers.from_npy(prompt_file),
                  placement=prompt_config()["placement"])
  return T5Transformer(base.config, prompt=prompt), frozen, {"prompt": {"prompt": array}}


@gin.configurable
def evaluate(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             initial_checkpoint_path: str = gin.REQUIRED, prompt_file: str = gin.REQUIRED,
             split: str = "validation", mode: str = "generation", batch_size: int = 32,
             max_examples: int | None = None, tfds_data_dir: str | None = None
             ) -> dict[str, float]:
  """Evaluates `pretrained checkpoint + prompt file`; writes metrics.jsonl and inference."""
  check_task(mixture_or_task_name, tfds_data_dir)
  write_config(model_dir)
  model, frozen, trainable = _prompted_from_file(initial_checkpoint_path, prompt_file)
  ev = evaluation.Evaluator(model, frozen, evaluation.task_names(mixture_or_task_name),
                            split=split, feature_lengths=task_feature_lengths,
                            batch_size=batch_size, max_examples=max_examples, mode=mode,
                            model_dir=model_dir)
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
          tfds_data_dir: str | None = None) -> list[pathlib.Path]:
  """Greedy predictions of `pretrained checkpoint + prompt file` as inference JSONL."""
  check_task(mixture_or_task_name, tfds_data_dir)
  write_config(model_dir)
  model, frozen, trainable = _prompted_from_file(initial_checkpoint_path, prompt_file)
  paths = []
  for task in evaluation.task_names(mixture_or_task_name):
    ev = evaluation.Evaluator(model, frozen, [task], split=split,
                              feature_lengths=task_feature_lengths, batch_size=batch_size,
                              max_examples=max_examples)
    preds = ev.predict(trainable, task)
    paths.append(evaluation.write_inference(model_dir, task, "infer", ev.examples[task], preds))
  return paths
