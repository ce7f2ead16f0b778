"""SuperGLUE (TFDS `super_glue` 1.0.2) in T5's text-to-text format, with and without prefix.

Registered names: `super_glue_<task>` and `super_glue_<task>_noprefix` for boolq, cb, copa,
multirc, record, rte, wic, wsc, axb and axg.

Inputs, targets and metrics are T5's (`t5.data.glue_utils` and T5's simple WSC), and the
no-prefix flavour is T5's string minus its first word (Lester et al.):

* WSC is T5's simple referent generation (Lester et al.'s WSC): 'wsc: <text with the
  pronoun marked *...*>', the target is the candidate referent, and the training split
  keeps only the positive examples (the true referents); validation keeps all. A
  prediction is scored with T5's matching rule (postprocessors.wsc_for: 't5' by default,
  'lenient' on request via `wsc_spec(..., referent_rule=...)`).
* ReCoRD's training split has one example per gold answer; evaluation keeps one example per
  query with all answers, the first as target (T5 writes one example per answer and
  deduplicates by query before scoring: the scores are the same). EM / F1 take the max.
* MultiRC: fields question, answer, paragraph (T5's order) with T5's markup removal on the
  joined text; EM and F1 (SuperGLUE's F1a) group answer options by question.
* AX-b / AX-g (test only) are written as RTE examples, for evaluating an RTE prompt. TFDS
  carries no AX-g pair ids, so the gender-parity score is not computed; accuracy is.
"""

from __future__ import annotations

from prompt_jax.data import metrics as m
from prompt_jax.data import postprocessors as post
from prompt_jax.data import preprocessors as pre
from prompt_jax.data.glue import ENTAILMENT_LABELS, KvTask, kv_spec
from prompt_jax.data.registry import TaskSpec, add_task
from prompt_jax.data.sources import SplitSpec, tfds_source_factory

SUPER_GLUE_VERSION = "1.0.2"
BOOL_LABELS = ("False", "True")
CB_LABELS = ("entailment", "contradiction", "neutral")


def _sg(config: str) -> str:
  return f"super_glue/{config}:{SUPER_GLUE_VERSION}"


_HYP_PREM = (("hypothesis", "hypothesis"), ("premise", "premise"))

SUPER_GLUE_KV_TASKS: dict[str, KvTask] = {t.name: t for t in (
    KvTask("boolq", _sg("boolq"), "boolq", (("passage", "passage"), ("question", "question")),
           BOOL_LABELS, (m.accuracy,), description="BoolQ"),
    KvTask("cb", _sg("cb"), "cb", _HYP_PREM, CB_LABELS,
           (m.accuracy, m.mean_class_f1_for(CB_LABELS)),
           description="CommitmentBank (acc., macro-F1)"),
    KvTask("copa", _sg("copa"), "copa",
           (("choice1", "choice1"), ("choice2", "choice2"), ("premise", "premise"),
            ("question", "question")), ("choice1", "choice2"), (m.accuracy,),
           description="COPA"),
    KvTask("rte", _sg("rte"), "rte", _HYP_PREM, ENTAILMENT_LABELS, (m.accuracy,),
           description="RTE (SuperGLUE)"),
    KvTask("wic", _sg("wic"), "wic",
           (("sentence1", "sentence1"), ("sentence2", "sentence2"), ("word", "word")),
           BOOL_LABELS, (m.accuracy,), description="WiC"),
    KvTask("axb", _sg("axb"), "rte", (("hypothesis", "sentence2"), ("premise", "sentence1")),
           ENTAILMENT_LABELS, (m.matthews_corrcoef_for(ENTAILMENT_LABELS),),
           splits={"test": "test"},
           description="AX-b diagnostic, written as RTE (Matthews corr.)"),
    KvTask("axg", _sg("axg"), "rte", _HYP_PREM, ENTAILMENT_LABELS, (m.accuracy,),
           splits={"test": "test"}, description="AX-g Winogender, written as RTE"),
)}

SUPER_GLUE_TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "axb",
                    "axg")
_STANDARD = {"train": "train", "validation": "validation", "test": "test"}
MULTIRC_FIELDS = (("question", "question"), ("answer", "answer"), ("paragraph", "paragraph"))


def _flavour(use_prefix: bool) -> str:
  return "" if use_prefix else " (no task prefix)"


def super_glue_task_name(task: str, use_prefix: bool = True) -> str:
  """'boolq' -> 'super_glue_boolq' / 'super_glue_boolq_noprefix'."""
  return f"super_glue_{task}" + ("" if use_prefix else "_noprefix")


def multirc_spec(name: str, *, use_prefix: bool, splits=None) -> TaskSpec:
  """MultiRC answer-option classification, metrics grouped by question."""
  tfds_name = _sg("multirc")
  return TaskSpec(
      name=name,
      make_source=tfds_source_factory(tfds_name, splits or _STANDARD),
      preprocessors=(pre.classification("multirc" if use_prefix else None, MULTIRC_FIELDS,
                                        BOOL_LABELS, clean=pre.multirc_markup),),
      postprocess_fn=post.multirc, metric_fns=(m.multirc_em_f1,), labels=BOOL_LABELS,
      tfds_datasets=(tfds_name,),
      description="MultiRC (EM, F1 by question)" + _flavour(use_prefix))


def record_spec(name: str, *, use_prefix: bool) -> TaskSpec:
  """ReCoRD as answer generation; training expands one example per answer."""
  tfds_name = _sg("record")
  splits = {"train": SplitSpec("train", transform=pre.expand_answers),
            "validation": "validation", "test": "test"}
  return TaskSpec(
      name=name, make_source=tfds_source_factory(tfds_name, splits),
      preprocessors=(pre.record(use_prefix),),
      postprocess_fn=post.qa_answers, metric_fns=(m.qa_em_f1,), labels=None,
      tfds_datasets=(tfds_name,),
      description="ReCoRD (EM, F1 over gold answers)" + _flavour(use_prefix))


def wsc_spec(name: str, *, use_prefix: bool, referent_rule: str = "t5") -> TaskSpec:
  """WSC referent generation; training keeps positive examples only.

  Args:
    name: registered name.
    use_prefix: keep T5's first word ('wsc:').
    referent_rule: how a prediction is matched with the candidate: 't5' (default) or
      'lenient' (non-default, see postprocessors.lenient_referent_match).
  """
  tfds_name = _sg("wsc.fixed")
  splits = {"train": SplitSpec("train", transform=pre.keep_positive_examples),
            "validation": "validation", "test": "test"}
  return TaskSpec(
      name=name, make_source=tfds_source_factory(tfds_name, splits),
      preprocessors=(pre.wsc_referent(use_prefix),),
      postprocess_fn=post.wsc_for(referent_rule), metric_fns=(m.accuracy,), labels=None,
      tfds_datasets=(tfds_name,),
      description="WSC referent generation (train: positives only)" + _flavour(use_prefix))


def register_super_glue() -> None:
  """Registers every SuperGLUE task in both formats."""
  for use_prefix in (True, False):
    for task in SUPER_GLUE_KV_TASKS.values():
      add_task(kv_spec(task, super_glue_task_name(task.name, use_prefix),
                       use_prefix=use_prefix))
    add_task(multirc_spec(super_glue_task_name("multirc", use_prefix), use_prefix=use_prefix))
    add_task(record_spec(super_glue_task_name("record", use_prefix), use_prefix=use_prefix))
    add_task(wsc_spec(super_glue_task_name("wsc", use_prefix), use_prefix=use_prefix))
