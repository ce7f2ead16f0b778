"""GLUE (TFDS `glue` 2.0.0) in T5's text-to-text format, with and without the task prefix.

Registered names: `glue_<task>` (inputs start with the task word, e.g. 'rte sentence1: ...')
and `glue_<task>_noprefix` (the same text without it), for cola, sst2, mrpc, qqp, stsb,
mnli (validation / test = matched), mnli_mismatched (evaluation only), qnli, rte, wnli and
ax (the diagnostic, unlabeled test only, written as MNLI). Mixtures `glue` /
`glue_noprefix`: the nine training tasks, example-proportional.

Inputs, targets and metrics are T5's (`t5.data.glue_utils`): fields sorted by feature
name, STS-B rounded to 0.2, MRPC / QQP F1 with invalid predictions counted wrong, CoLA's
Matthews correlation with one class for all invalid outputs. CoLA also reports accuracy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from prompt_jax.data import metrics as m
from prompt_jax.data import postprocessors as post
from prompt_jax.data import preprocessors as pre
from prompt_jax.data.registry import MixtureSpec, TaskSpec, add_mixture, add_task
from prompt_jax.data.registry import rate_num_examples
from prompt_jax.data.sources import SplitSpec, tfds_source_factory

GLUE_VERSION = "2.0.0"
STANDARD_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class KvTask:
  """A task whose inputs are '<prefix> field: text ...' and whose target is a label name.

  Attributes:
    name: task part of the registered name ('rte', 'mnli_mismatched').
    tfds_name: TFDS dataset with config and version.
    prefix: the task word T5 puts first.
    fields: (shown name, feature path) in input order.
    labels: label names in ClassLabel order; None for STS-B's regression target.
    metric_fns: metric functions.
    splits: task split -> TFDS split or SplitSpec.
    description: one line for listings.
  """
  name: str
  tfds_name: str
  prefix: str
  fields: tuple[tuple[str, str], ...]
  labels: tuple[str, ...] | None
  metric_fns: tuple[Callable[..., Any], ...]
  splits: Mapping[str, str | SplitSpec] = dataclasses.field(
      default_factory=lambda: dict(STANDARD_SPLITS))
  description: str = ""


def kv_spec(task: KvTask, registered_name: str, *, use_prefix: bool,
            vocabulary: str = "t5") -> TaskSpec:
  """The TaskSpec of a key-value classification / regression task."""
  prefix = task.prefix if use_prefix else None
  if task.labels is None:
    preprocess = pre.regression(prefix, task.fields)
    postprocess = post.string_to_float
  else:
    preprocess = pre.classification(prefix, task.fields, task.labels)
    postprocess = post.string_label
  return TaskSpec(
      name=registered_name,
      make_source=tfds_source_factory(task.tfds_name, task.splits),
      preprocessors=(preprocess,),
      postprocess_fn=postprocess,
      metric_fns=task.metric_fns,
      labels=task.labels,
      tfds_datasets=(task.tfds_name,),
      vocabulary=vocabulary,
      description=task.description + ("" if use_prefix else " (no task prefix)"))


def _glue(config: str) -> str:
  return f"glue/{config}:{GLUE_VERSION}"


_S1_S2 = (("sentence1", "sentence1"), ("sentence2", "sentence2"))
_HYP_PREM = (("hypothesis", "hypothesis"), ("premise", "premise"))
MNLI_LABELS = ("entailment", "neutral", "contradiction")
ENTAILMENT_LABELS = ("entailment", "not_entailment")
COLA_LABELS = ("unacceptable", "acceptable")

GLUE_TASKS: dict[str, KvTask] = {t.name: t for t in (
    KvTask("cola", _glue("cola"), "cola", (("sentence", "sentence"),),
           COLA_LABELS, (m.matthews_corrcoef_for(COLA_LABELS), m.accuracy),
           description="CoLA acceptability (Matthews corr.)"),
    KvTask("sst2", _glue("sst2"), "sst2", (("sentence", "sentence"),),
           ("negative", "positive"), (m.accuracy,), description="SST-2 sentiment"),
    KvTask("mrpc", _glue("mrpc"), "mrpc", _S1_S2, ("not_equivalent", "equivalent"),
           (m.accuracy, m.f1_for("equivalent", "not_equivalent")),
           description="MRPC paraphrase (acc., F1)"),
    KvTask("qqp", _glue("qqp"), "qqp", (("question1", "question1"), ("question2", "question2")),
           ("not_duplicate", "duplicate"), (m.accuracy, m.f1_for("duplicate", "not_duplicate")),
           description="QQP duplicate questions (acc., F1)"),
    KvTask("stsb", _glue("stsb"), "stsb", _S1_S2, None, (m.pearson_spearman,),
           description="STS-B similarity, targets rounded to 0.2 (Pearson, Spearman)"),
    KvTask("mnli", _glue("mnli"), "mnli", _HYP_PREM, MNLI_LABELS, (m.accuracy,),
           splits={"train": "train", "validation": "validation_matched",
                   "test": "test_matched"},
           description="MNLI; validation / test are the matched sets"),
    KvTask("mnli_mismatched", _glue("mnli"), "mnli", _HYP_PREM, MNLI_LABELS, (m.accuracy,),
           splits={"validation": "validation_mismatched", "test": "test_mismatched"},
           description="MNLI mismatched (evaluation only)"),
    KvTask("qnli", _glue("qnli"), "qnli", (("question", "question"), ("sentence", "sentence")),
           ENTAILMENT_LABELS, (m.accuracy,), description="QNLI"),
    KvTask("rte", _glue("rte"), "rte", _S1_S2, ENTAILMENT_LABELS, (m.accuracy,),
           description="RTE"),
    KvTask("wnli", _glue("wnli"), "wnli", _S1_S2, ("not_entailment", "entailment"),
           (m.accuracy,), description="WNLI"),
    KvTask("ax", _glue("ax"), "mnli", _HYP_PREM, MNLI_LABELS, (),
           splits={"test": "test"},
           description="GLUE diagnostic (unlabeled test), written as MNLI"),
)}

GLUE_TRAIN_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")


def glue_task_name(task: str, use_prefix: bool = True) -> str:
  """Registered name of GLUE task `task` ('rte' -> 'glue_rte' / 'glue_rte_noprefix')."""
  return f"glue_{task}" + ("" if use_prefix else "_noprefix")


def register_glue() -> None:
  """Registers every GLUE task in both formats and the `glue` / `glue_noprefix` mixtures."""
  for use_prefix in (True, False):
    for task in GLUE_TASKS.values():
      add_task(kv_spec(task, glue_task_name(task.name, use_prefix), use_prefix=use_prefix))
    suffix = "" if use_prefix else "_noprefix"
    add_mixture(MixtureSpec(
        f"glue{suffix}",
        tuple((glue_task_name(t, use_prefix), rate_num_examples) for t in GLUE_TRAIN_TASKS),
        description="GLUE training tasks, example-proportional"))
