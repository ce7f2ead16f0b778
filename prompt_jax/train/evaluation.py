"""Evaluation of a (prompted) model on SeqIO tasks: the one evaluator.

Two modes:

* generation: the adapter decodes greedily (KV cache); the task's postprocessor turns
  predictions and targets into comparable values and its metric functions score them.
* rank_classification: for a classification task that declares its label strings
  (`prompt_jax.data.registry.task_labels`), every label is scored as the target of every
  example with the model's log-likelihood (`adapter.score`); the best label is the
  prediction, which goes through the same postprocess + metrics path.

The pure pieces (`score_predictions`, `rank_classify`, `rank_classification`, `evaluate`)
take predicted strings or a `score_fn(inputs [B, L], targets [B, T]) -> [B]`, so they are
tested without a model. `Evaluator` binds them to a `ModelAdapter` and frozen parameters:
called with the trainable subtree it returns `{"<task>/<metric>": value}` for every task of
a mixture (each task's examples carry its task id) and writes
`<model_dir>/inference/<task>-<step>.jsonl`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import checkpointing
from prompt_jax.train import inputs as inputs_lib
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import partitioning
from prompt_jax.train import paths

Example = Mapping[str, Any]
ScoreFn = Callable[[np.ndarray, np.ndarray], Any]  # (inputs [B, L], targets [B, T]) -> [B]
LabelScoreFn = Callable[[np.ndarray, np.ndarray], Any]  # (inputs [B, L], labels [C, T]) -> [B, C]
MODES = ("generation", "rank_classification")


@dataclasses.dataclass
class EvalResult:
  """Metrics plus what produced them.

  Attributes:
    metrics: metric name -> value.
    predictions: raw predicted strings, one per example.
    targets: postprocessed targets, one per example.
    scores: [N, C] log-likelihood of each label (rank classification only).
  """
  metrics: dict[str, float]
  predictions: list[str]
  targets: list[Any]
  scores: np.ndarray | None = None


def _text(x: Any) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def get_task(task_name: str) -> seqio.Task:
  """The SeqIO task (registering a vocabulary variant of a benchmark task on demand)."""
  from prompt_jax.data import registry  # Local: registering the benchmarks is not free.
  try:
    provider = registry.get_mixture_or_task(task_name)
  except KeyError:
    provider = seqio.get_mixture_or_task(task_name)  # A task prompt_jax's registry lacks.
  if not isinstance(provider, seqio.Task):
    raise ValueError(f"Evaluate the tasks of mixture {task_name!r} one by one.")
  return provider


def task_labels(task_name: str) -> tuple[str, ...] | None:
  """The label strings of a classification task; None when it declares none."""
  from prompt_jax.data import registry
  try:
    return registry.task_labels(task_name)
  except KeyError:
    return None


def load_examples(task_name: str, split: str = "validation", *,
                  feature_lengths: Mapping[str, int] | None = None,
                  max_examples: int | None = None,
                  data_dir: str | None = None) -> list[dict[str, Any]]:
  """A task split's preprocessed examples (tokens and `*_pretokenized` text), in order.

  Inputs are truncated to `feature_lengths` as in training (None: no truncation).
  """
  from prompt_jax.data import registry
  if data_dir is not None:
    registry.set_tfds_data_dir(data_dir)
  task = get_task(task_name)
  try:
    registry.check_prepared(task.name, data_dir)
  except KeyError:
    pass  # Not a registry task (no TFDS data to check).
  ds = task.get_dataset(dict(feature_lengths) if feature_lengths else None, split=split,
                        shuffle=False, num_epochs=1, use_cached=False)
  if max_examples is not None:
    ds = ds.take(max_examples)
  return list(ds.as_numpy_iterator())


def _target_text(example: Example, vocabulary: seqio.Vocabulary) -> str:
  if "targets_pretokenized" in example:
    return _text(example["targets_pretokenized"])
  return vocabulary.decode([int(t) for t in example["targets"]])


def score_predictions(task_name: str, examples: Sequence[Example],
                      predictions: Sequence[str | bytes]) -> EvalResult:
  """Generation mode: postprocess predicted strings and targets, then run the metrics."""
  if len(examples) != len(predictions):
    raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions.")
  task = get_task(task_name)
  vocabulary = task.output_features["targets"].vocabulary
  predictions = [_text(p) for p in predictions]
  targets = [task.postprocess_fn(_target_text(ex, vocabulary), example=ex, is_target=True)
             for ex in examples]
  values = [task.postprocess_fn(p, example=ex, is_target=False)
            for p, ex in zip(predictions, examples)]
  metrics: dict[str, float] = {}
  for fn in task.metric_fns:
    metrics.update({k: float(getattr(v, "value", v)) for k, v in fn(targets, values).items()})
  return EvalResult(metrics, predictions, targets)


def _pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    row = np.asarray(row)
    if len(row) > length:
      raise ValueError(f"Sequence of length {len(row)} exceeds the padded length {length}.")
    out[i, :len(row)] = row
  return out


def rank_classify(inputs: Sequence[Sequence[int]], labels: Sequence[str],
                  score_fn: ScoreFn | None, vocabulary: seqio.Vocabulary, *,
                  batch_size: int = 32, input_length: int | None = None,
                  label_score_fn: LabelScoreFn | None = None,
                  bucket_lengths: Sequence[int] | None = None
                  ) -> tuple[list[str], np.ndarray]:
  """Scores every label for every input; returns argmax labels and the [N, C] scores.

  Two scorers, the same scores:

  * `label_score_fn(inputs [B, L], labels [C, T]) -> [B, C]` (the fast path, what the
    `Evaluator` uses): one call per `batch_size` examples, which encodes each example once
    and scores all C labels against that encoder output.
  * `score_fn(inputs [B, L], targets [B, T]) -> [B]`: one row per (example, label) pair,
    `batch_size` pairs per call (each pair a full forward pass).

  Args:
    inputs: token ids per example (EOS included, no padding).
    labels: the C label strings; each is tokenised and EOS appended.
    score_fn: the pair scorer (unused when `label_score_fn` is given; may then be None).
    vocabulary: the task's vocabulary.
    batch_size: rows per call; every call has this exact row count (the last batch is
      filled with repeats), so a jitted scorer compiles once per input length.
    input_length: pad inputs to this length (default: the longest input).
    label_score_fn: the one-encoder-pass scorer.
    bucket_lengths: when given, each call's inputs are padded to the smallest of these
      lengths that fits the call's longest input (at most `input_length`), so short
      examples do not pay for the longest one.

  Returns:
    Predicted label per example (ties go to the earlier label) and the scores.
  """
  if not labels:
    raise ValueError("rank_classify needs at least one label.")
  if score_fn is None and label_score_fn is None:
    raise ValueError("rank_classify needs a score_fn or a label_score_fn.")
  label_ids = [list(vocabulary.encode(label)) + [vocabulary.eos_id] for label in labels]
  input_length = input_length or max(len(x) for x in inputs)
  target_length = max(len(t) for t in label_ids)
  scores = np.full((len(inputs), len(labels)), np.nan, np.float64)

  def pad_inputs(rows):
    longest = max(len(r) for r in rows)
    length = (input_length if not bucket_lengths or longest > input_length
              else min([b for b in bucket_lengths if b >= longest] + [input_length]))
    return _pad(rows, length)

  if label_score_fn is not None:
    label_table = _pad(label_ids, target_length)  # [C, T]
    for start in range(0, len(inputs), batch_size):
      chunk = list(range(start, min(start + batch_size, len(inputs))))
      filled = chunk + [chunk[0]] * (batch_size - len(chunk))
      table = np.asarray(label_score_fn(pad_inputs([inputs[i] for i in filled]), label_table),
                         np.float64)
      if table.shape != (batch_size, len(labels)):
        raise ValueError(f"label_score_fn returned shape {table.shape}, expected "
                         f"({batch_size}, {len(labels)}).")
      scores[chunk] = table[:len(chunk)]
    return [labels[j] for j in np.argmax(scores, axis=1)], scores

  pairs = [(i, c) for i in range(len(inputs)) for c in range(len(labels))]
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    filled = chunk + [chunk[0]] * (batch_size - len(chunk))
    x = pad_inputs([inputs[i] for i, _ in filled])  # [B, L]
    y = _pad([label_ids[c] for _, c in filled], target_length)  # [B, T]
    ll = np.asarray(score_fn(x, y), np.float64)
    if ll.shape != (batch_size,):
      raise ValueError(f"score_fn returned shape {ll.shape}, expected ({batch_size},).")
    for (i, c), value in zip(chunk, ll):
      scores[i, c] = value
  return [labels[j] for j in np.argmax(scores, axis=1)], scores


def rank_classification(task_name: str, examples: Sequence[Example], score_fn: ScoreFn | None,
                        *, batch_size: int = 32, input_length: int | None = None,
                        label_score_fn: LabelScoreFn | None = None,
                        bucket_lengths: Sequence[int] | None = None) -> EvalResult:
  """Rank-classification mode: best label by log-likelihood, then postprocess + metrics.

  The scorers and `bucket_lengths` are those of `rank_classify`.
  """
  labels = task_labels(task_name)
  if not labels:
    raise ValueError(f"Task {task_name!r} declares no label strings; evaluate it in "
                     "generation mode.")
  vocabulary = get_task(task_name).output_features["targets"].vocabulary
  inputs = [np.asarray(ex["inputs"]).tolist() for ex in examples]
  predictions, scores = rank_classify(inputs, labels, score_fn, vocabulary,
                                      batch_size=batch_size, input_length=input_length,
                                      label_score_fn=label_score_fn,
                                      bucket_lengths=bucket_lengths)
  result = score_predictions(task_name, examples, predictions)
  result.scores = scores
  return result


def evaluate(task_name: str, examples: Sequence[Example], *, mode: str,
             predictions: Sequence[str] | None = None, score_fn: ScoreFn | None = None,
             batch_size: int = 32, label_score_fn: LabelScoreFn | None = None) -> EvalResult:
  """Dispatches to generation (`predictions` given) or rank classification (`score_fn` or
  `label_score_fn`)."""
  check_mode(mode)
  if mode == "generation":
    if predictions is None:
      raise ValueError("generation mode needs the predicted strings.")
    return score_predictions(task_name, examples, predictions)
  if score_fn is None and label_score_fn is None:
    raise ValueError("rank_classification mode needs a score_fn or a label_score_fn.")
  return rank_classification(task_name, examples, score_fn, batch_size=batch_size,
                             label_score_fn=label_score_fn)


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"Unknown evaluation mode {mode!r}; use one of {MODES}.")


def decode_targets(tokens: np.ndarray, vocabulary: seqio.Vocabulary) -> list[str]:
  """Decoded rows [N, T] (up to the first EOS) -> strings."""
  out = []
  for row in np.asarray(tokens).tolist():
    eos = vocabulary.eos_id
    out.append(vocabulary.decode(row[:row.index(eos)] if eos in row else row))
  return out


def put_rows(rows: np.ndarray, mesh: jax.sharding.Mesh | None, *,
             replicated: bool = False) -> jax.Array:
  """A host batch [B, ...] (the same in every process) as an array for the jitted fns:
  split over `data` on a mesh (whole on every device with `replicated`)."""
  if mesh is None:
    return jnp.asarray(rows)
  from prompt_jax.train import builder  # Local: builder imports the step, not us.
  sharding = partitioning.replicated(mesh) if replicated else partitioning.data_sharding(mesh)
  return builder.global_array(rows, sharding)


def put_params(frozen: Any, trainable: Any, mesh: jax.sharding.Mesh | None) -> Any:
  """frozen (as loaded: sharded on the mesh) + trainable (replicated on the mesh)."""
  if mesh is not None:
    from prompt_jax.train import builder
    repl = partitioning.replicated(mesh)
    trainable = builder.put_global(trainable, jax.tree_util.tree_map(lambda _: repl,
                                                                     trainable))
  return opt_lib.merge_params(frozen, trainable)


def _on_mesh(fn, mesh):
  """Jitted; on a mesh, traced under its logical-axis rules with replicated outputs (every
  process reads them whole). Inputs arrive placed (`Evaluator._put`)."""
  if mesh is None:
    return jax.jit(fn)
  return jax.jit(partitioning.with_rules(fn, mesh), out_shardings=partitioning.replicated(mesh))


@functools.lru_cache(maxsize=16)
def jitted_predict(adapter: adapter_lib.ModelAdapter, max_decode_length: int, mesh=None):
  """One jitted decoder per (adapter, T, mesh): equal adapters share compiled executables."""
  return _on_mesh(functools.partial(adapter.predict, max_decode_length=max_decode_length), mesh)


@functools.lru_cache(maxsize=16)
def jitted_score(adapter: adapter_lib.ModelAdapter, mesh=None):
  return _on_mesh(adapter.score, mesh)


@functools.lru_cache(maxsize=16)
def jitted_score_labels(adapter: adapter_lib.ModelAdapter, mesh=None):
  return _on_mesh(adapter.score_labels, mesh)


class Evaluator:
  """Evaluates the trainable subtree of one model on fixed examples of several tasks.

  Built once (examples loaded, decoding and scoring jitted); called with the trainable
  subtree (any split of the parameters between it and `frozen` works: they are merged
  leaf by leaf). `task_ids` maps each task to the id its examples carry (default: its
  index in `tasks`), for per-task prompt modules. `buckets` (default on) pads each batch's
  inputs to the smallest bucket length that fits it (`prompt_jax.train.inputs`), one
  compiled shape per bucket; `inputs.FIXED_SHAPES` pads every batch to the feature length.
  Rank classification encodes each example once and scores every label from that
  encoder output (`adapter.score_labels`). With a `mesh`, batches are split over
  `data`, the trainable subtree is replicated and the frozen params keep the shardings they
  were loaded with, as in training; every process of a multi-host run calls it alike, and
  process 0 writes the inference files.
  """

  def __init__(self, model: Any, frozen: Any, tasks: Sequence[str], *, split: str,
               feature_lengths: Mapping[str, int], batch_size: int = 32,
               max_examples: int | None = None, mode: str = "generation",
               model_dir: str | None = None, task_ids: Mapping[str, int] | None = None,
               examples: Mapping[str, Sequence[Example]] | None = None,
               mesh: jax.sharding.Mesh | None = None,
               buckets: inputs_lib.LengthBuckets = inputs_lib.LengthBuckets()):
    check_mode(mode)
    self.mesh = mesh
    self.buckets = buckets
    self.adapter = adapter_lib.as_adapter(model)
    self.frozen, self.mode, self.model_dir = frozen, mode, model_dir
    self.batch_size = batch_size
    self.lengths = dict(feature_lengths)
    self.task_ids = dict(task_ids) if task_ids is not None else {t: i for i, t in
                                                                 enumerate(tasks)}
    self.examples = ({t: list(examples[t]) for t in tasks} if examples is not None else
                     {t: load_examples(t, split, feature_lengths=self.lengths,
                                       max_examples=max_examples) for t in tasks})
    self._decode = jitted_predict(self.adapter, self.lengths["targets"], mesh)
    self._score = jitted_score(self.adapter, mesh)
    self._score_labels = jitted_score_labels(self.adapter, mesh)

  def params(self, trainable: Any) -> Any:
    return put_params(self.frozen, trainable, self.mesh)

  def _put(self, rows: np.ndarray) -> jax.Array:
    return put_rows(rows, self.mesh)

  def _replicated(self, rows: np.ndarray) -> jax.Array:
    """A host array every device reads whole (e.g. the label strings' tokens)."""
    return put_rows(rows, self.mesh, replicated=True)

  def _ids(self, task: str, n: int) -> jax.Array:
    return self._put(np.full((n,), self.task_ids[task], np.int32))

  def predict(self, trainable: Any, task: str) -> list[str]:
    """Greedy predictions (decoded strings) for the task's examples, in order."""
    params = self.params(trainable)
    vocab = get_task(task).output_features["targets"].vocabulary
    out: list[str] = []
    exs = self.examples[task]
    for i in range(0, len(exs), self.batch_size):
      chunk = [e["inputs"] for e in exs[i:i + self.batch_size]]
      n = len(chunk)
      chunk += [chunk[-1]] * (self.batch_size - n)  # One compiled shape per bucket.
      length = self.buckets.bucket(max(len(x) for x in chunk), self.lengths["inputs"])
      tokens = self._decode(params, self._put(_pad(chunk, length)),
                            task_ids=self._ids(task, self.batch_size))
      out.extend(decode_targets(np.asarray(tokens)[:n], vocab))
    return out

  def score_fn(self, trainable: Any, task: str) -> ScoreFn:
    """`(inputs, targets) -> [B]` log-likelihoods under this task's prompt."""
    params = self.params(trainable)
    return lambda inputs, targets: np.asarray(self._score(
        params, self._put(np.asarray(inputs)), self._put(np.asarray(targets)),
        task_ids=self._ids(task, len(inputs))))

  def label_score_fn(self, trainable: Any, task: str) -> LabelScoreFn:
    """`(inputs [B, L], labels [C, T]) -> [B, C]` log-likelihoods, one encoder pass each."""
    params = self.params(trainable)
    return lambda inputs, labels: np.asarray(self._score_labels(
        params, self._put(np.asarray(inputs)), self._replicated(np.asarray(labels)),
        task_ids=self._ids(task, len(inputs))))

  def evaluate_task(self, trainable: Any, task: str) -> EvalResult:
    exs = self.examples[task]
    if self.mode == "rank_classification":
      return rank_classification(task, exs, self.score_fn(trainable, task),
                                 batch_size=self.batch_size,
                                 input_length=self.lengths["inputs"],
                                 label_score_fn=self.label_score_fn(trainable, task),
                                 bucket_lengths=self.buckets.lengths(self.lengths["inputs"]))
    return score_predictions(task, exs, self.predict(trainable, task))

  def __call__(self, trainable: Any, step: int | str) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for task in self.examples:
      result = self.evaluate_task(trainable, task)
      metrics.update({f"{task}/{k}": float(v) for k, v in result.metrics.items()})
      if self.model_dir is not None and jax.process_index() == 0:
        write_inference(self.model_dir, task, step, self.examples[task], result.predictions)
    return metrics


def write_inference(model_dir: str, task: str, step: int | str, examples: Sequence[Example],
                    predictions: Sequence[str],
                    extras: Sequence[Mapping[str, Any]] | None = None) -> paths.epath.Path:
  """`<model_dir>/inference/<task>-<step>.jsonl`: inputs, targets and predictions.

  `extras`: more fields per example (e.g. an ensemble's member predictions).
  """
  extras = extras if extras is not None else [{}] * len(examples)
  lines = [json.dumps({"inputs": _text(e.get("inputs_pretokenized", "")),
                       "targets": _text(e.get("targets_pretokenized", "")),
                       "prediction": p, **x}, ensure_ascii=False)
           for e, p, x in zip(examples, predictions, extras)]
  path = paths.as_path(model_dir) / "inference" / f"{task}-{step}.jsonl"
  return checkpointing.atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
