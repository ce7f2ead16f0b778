"""Evaluation in two modes: generation and rank classification.

* generation: the model decodes a string per example; the task's postprocessor turns
  predictions and targets into comparable values and its metrics score them.
* rank_classification: for a classification task (one that declares its label strings,
  `registry.task_labels`), every label string is scored as the target of every example
  with the model's log-likelihood; the best-scoring label is the prediction, which then
  goes through the same postprocess + metrics path. No decoding, no invalid outputs.

The model side is a `score_fn(inputs [B, L] int32, targets [B, T] int32) -> [B]` callable
(log-likelihood of each target sequence given its inputs; 0 is padding and both sides end
with EOS), as provided by the training loop's model adapter.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import seqio

from prompt_jax.data import registry
from prompt_jax.data.postprocessors import as_text

Example = Mapping[str, Any]
ScoreFn = Callable[[np.ndarray, np.ndarray], Any]
MODES = ("generation", "rank_classification")


@dataclasses.dataclass
class EvalResult:
  """Metrics plus what produced them.

  Attributes:
    metrics: metric name -> value (percent).
    predictions: raw predicted strings, one per example.
    targets: postprocessed targets, one per example.
    scores: [N, C] log-likelihood of each label (rank classification only).
  """
  metrics: dict[str, float]
  predictions: list[str]
  targets: list[Any]
  scores: np.ndarray | None = None


def load_examples(task_name: str, split: str = "validation", *,
                  max_examples: int | None = None, data_dir: str | None = None
                  ) -> list[dict[str, Any]]:
  """A task split's preprocessed examples (tokens and `*_pretokenized` text), in order."""
  ds = registry.get_dataset(task_name, split, data_dir=data_dir, shuffle=False)
  if max_examples is not None:
    ds = ds.take(max_examples)
  return list(ds.as_numpy_iterator())


def _target_text(example: Example, vocabulary: seqio.Vocabulary) -> str:
  if "targets_pretokenized" in example:
    return as_text(example["targets_pretokenized"])
  return vocabulary.decode([int(t) for t in example["targets"]])


def score_predictions(task_name: str, examples: Sequence[Example],
                      predictions: Sequence[str]) -> EvalResult:
  """Generation mode: postprocess predicted strings and targets, then run the metrics."""
  if len(examples) != len(predictions):
    raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions.")
  task = registry.get_mixture_or_task(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f"Evaluate the tasks of mixture {task_name!r} one by one.")
  spec = registry.task_spec(task_name)
  vocabulary = task.output_features["targets"].vocabulary
  predictions = [as_text(p) for p in predictions]
  targets = [task.postprocess_fn(_target_text(ex, vocabulary), example=ex, is_target=True)
             for ex in examples]
  values = [task.postprocess_fn(p, example=ex, is_target=False)
            for p, ex in zip(predictions, examples)]
  metrics: dict[str, float] = {}
  for fn in spec.metric_fns:
    metrics.update({k: float(v) for k, v in fn(targets, values).items()})
  return EvalResult(metrics, predictions, targets)


def _pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    if len(row) > length:
      raise ValueError(f"Sequence of length {len(row)} exceeds the padded length {length}.")
    out[i, :len(row)] = row
  return out


def rank_classify(inputs: Sequence[Sequence[int]], labels: Sequence[str], score_fn: ScoreFn,
                  vocabulary: seqio.Vocabulary, *, batch_size: int = 32,
                  input_length: int | None = None) -> tuple[list[str], np.ndarray]:
  """Scores every label for every input; returns argmax labels and the [N, C] scores.

  Args:
    inputs: token ids per example (EOS included, no padding).
    labels: the C label strings; each is tokenised and EOS appended.
    score_fn: `(inputs [B, L], targets [B, T]) -> [B]` log-likelihoods.
    vocabulary: the task's vocabulary.
    batch_size: (example, label) pairs per score_fn call; every call has this exact
      shape (the last batch is filled with repeats), so a jitted score_fn compiles once.
    input_length: pad inputs to this length (default: the longest input).

  Returns:
    Predicted label per example (ties go to the earlier label) and the scores.
  """
  if not labels:
    raise ValueError("rank_classify needs at least one label.")
  label_ids = [list(vocabulary.encode(label)) + [vocabulary.eos_id] for label in labels]
  input_length = input_length or max(len(x) for x in inputs)
  target_length = max(len(t) for t in label_ids)
  pairs = [(i, c) for i in range(len(inputs)) for c in range(len(labels))]
  scores = np.full((len(inputs), len(labels)), np.nan, np.float64)
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    filled = chunk + [chunk[0]] * (batch_size - len(chunk))
    x = _pad([inputs[i] for i, _ in filled], input_length)  # [B, L]
    y = _pad([label_ids[c] for _, c in filled], target_length)  # [B, T]
    ll = np.asarray(score_fn(x, y), np.float64)
    if ll.shape != (batch_size,):
      raise ValueError(f"score_fn returned shape {ll.shape}, expected ({batch_size},).")
    for (i, c), value in zip(chunk, ll):
      scores[i, c] = value
  return [labels[j] for j in np.argmax(scores, axis=1)], scores


def rank_classification(task_name: str, examples: Sequence[Example], score_fn: ScoreFn, *,
                        batch_size: int = 32) -> EvalResult:
  """Rank-classification mode: best label by log-likelihood, then postprocess + metrics."""
  labels = registry.task_labels(task_name)
  if not labels:
    raise ValueError(f"Task {task_name!r} declares no label strings; evaluate it in "
                     "generation mode.")
  task = registry.get_mixture_or_task(task_name)
  vocabulary = task.output_features["targets"].vocabulary
  inputs = [list(np.asarray(ex["inputs"]).tolist()) for ex in examples]
  predictions, scores = rank_classify(inputs, labels, score_fn, vocabulary,
                                      batch_size=batch_size)
  result = score_predictions(task_name, examples, predictions)
  result.scores = scores
  return result


def evaluate(task_name: str, examples: Sequence[Example], *, mode: str,
             predictions: Sequence[str] | None = None, score_fn: ScoreFn | None = None,
             batch_size: int = 32) -> EvalResult:
  """Dispatches to generation (`predictions` given) or rank classification (`score_fn`)."""
  if mode == "generation":
    if predictions is None:
      raise ValueError("generation mode needs the predicted strings.")
    return score_predictions(task_name, examples, predictions)
  if mode == "rank_classification":
    if score_fn is None:
      raise ValueError("rank_classification mode needs a score_fn.")
    return rank_classification(task_name, examples, score_fn, batch_size=batch_size)
  raise ValueError(f"Unknown evaluation mode {mode!r}; use one of {MODES}.")
