"""Evaluation of a (prompted) model on SeqIO tasks: decode or rank-classify, then score.

Generation mode decodes greedily with the KV cache, postprocesses predictions and targets
with the task's postprocessor and applies its metric functions. Rank classification scores
every label string with the model's log-likelihood (`prompt_jax.data.evaluation`).
Predictions are written to `<model_dir>/inference/<task>-<step>.jsonl`.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_jax.models import decoding
from prompt_jax.models.t5 import T5Transformer
from prompt_jax.train import checkpointing

Example = Mapping[str, Any]


def task_names(mixture_or_task_name: str) -> list[str]:
  """The tasks of a mixture (or the task itself)."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  if isinstance(provider, seqio.Mixture):
    return [t.name for t in provider.tasks]
  return [provider.name]


def load_examples(task_name: str, split: str, feature_lengths: Mapping[str, int],
                  max_examples: int | None = None) -> list[dict[str, Any]]:
  """Preprocessed examples of a task split, in order (tokens + `*_pretokenized` text)."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1,
                        use_cached=False)
  if max_examples is not None:
    ds = ds.take(max_examples)
  return list(ds.as_numpy_iterator())


def _pad(rows: Sequence[np.ndarray], length: int) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    r = np.asarray(r)[:length]
    out[i, :len(r)] = r
  return out


def _text(x: Any) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class Evaluator:
  """Evaluates parameters of one model on fixed examples of several tasks.

  Built once (examples loaded, decoding jitted); called with the trainable subtree.
  """

  def __init__(self, model: T5Transformer, frozen: Any, tasks: Sequence[str], *, split: str,
               feature_lengths: Mapping[str, int], batch_size: int = 32,
               max_examples: int | None = None, mode: str = "generation",
               model_dir: str | None = None):
    self.model, self.frozen, self.mode, self.model_dir = model, frozen, mode, model_dir
    self.batch_size = batch_size
    self.lengths = dict(feature_lengths)
    self.examples = {t: load_examples(t, split, self.lengths, max_examples) for t in tasks}
    self._decode = jax.jit(functools.partial(
        decoding.greedy_decode, model, max_decode_length=self.lengths["targets"]))
    self._score = jax.jit(functools.partial(decoding.score_sequences, model))

  def _params(self, trainable: Any) -> Any:
    return {**self.frozen, **trainable}

  def predict(self, trainable: Any, task: str) -> list[str]:
    """Greedy predictions (decoded strings) for the task's examples, in order."""
    params = self._params(trainable)
    vocab = seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
    out: list[str] = []
    exs = self.examples[task]
    for i in range(0, len(exs), self.batch_size):
      chunk = [e["inputs"] for e in exs[i:i + self.batch_size]]
      n = len(chunk)
      chunk += [chunk[-1]] * (self.batch_size - n)  # One compiled shape.
      tokens = np.asarray(self._decode(params, jnp.asarray(_pad(chunk, self.lengths["inputs"]))))
      for row in tokens[:n]:
        row = [int(t) for t in row]
        out.append(vocab.decode(row[:row.index(1)] if 1 in row else row))
    return out

  def score_fn(self, trainable: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    params = self._params(trainable)
    return lambda inputs, targets: np.asarray(self._score(params, jnp.asarray(inputs),
                                                         jnp.asarray(targets)))

  def __call__(self, trainable: Any, step: int) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for task, exs in self.examples.items():
      if self.mode == "rank_classification":
        from prompt_jax.data import evaluation as data_eval  # Label strings live there.
        result = data_eval.rank_classification(task, exs, self.score_fn(trainable),
                                               batch_size=self.batch_size)
        preds, scored = result.predictions, result.metrics
      else:
        preds = self.predict(trainable, task)
        scored = score_predictions(task, exs, preds)
      metrics.update({f"{task}/{k}": float(v) for k, v in scored.items()})
      if self.model_dir is not None:
        write_inference(self.model_dir, task, step, exs, preds)
    return metrics


def score_predictions(task_name: str, examples: Sequence[Example],
                      predictions: Sequence[str]) -> dict[str, float]:
  """Postprocesses predictions and targets with the task's postprocessor; applies metrics."""
  task = seqio.get_mixture_or_task(task_name)
  targets = [task.postprocess_fn(_text(e["targets_pretokenized"]), example=e, is_target=True)
             for e in examples]
  preds = [task.postprocess_fn(p, example=e, is_target=False)
           for p, e in zip(predictions, examples)]
  out: dict[str, float] = {}
  for fn in task.metric_fns:
    out.update({k: float(getattr(v, "value", v)) for k, v in fn(targets, preds).items()})
  return out


def write_inference(model_dir: str, task: str, step: int | str, examples: Sequence[Example],
                    predictions: Sequence[str]) -> pathlib.Path:
  """`<model_dir>/inference/<task>-<step>.jsonl`: inputs, targets and predictions."""
  lines = [json.dumps({"inputs": _text(e.get("inputs_pretokenized", "")),
                       "targets": _text(e.get("targets_pretokenized", "")),
                       "prediction": p}, ensure_ascii=False)
           for e, p in zip(examples, predictions)]
  path = pathlib.Path(model_dir) / "inference" / f"{task}-{step}.jsonl"
  checkpointing.atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
  return path
