"""Domain-transfer splits: SQuAD -> MRQA out-of-domain, and QQP <-> MRPC.

Question answering (Lester et al. section 7): train `squad` (TFDS `squad/v1.1`, T5's
`squad` format: 'question: Q context: C' with punctuation spaced out, target the first gold
answer spaced the same way), evaluate zero-shot on `mrqa_<domain>` for TextbookQA, BioASQ,
RACE, RE, DuoRC and DROP (TFDS `mrqa`; their dev sets are TFDS' 'test' split, exposed here
as 'validation'; formatted as the reference repository's MRQA preprocessing: whitespace
normalised, punctuation spaced, [PAR]-style markers kept, target the first detected
answer). `..._noprefix` variants drop the first word ('question:'). EM / F1 (T5's 'em',
'f1', SQuAD v1.1 rules) take the max over gold answers. Mixtures: `mrqa_ood` (the six) and
`mrqa_transfer` (squad + the six), each also `..._noprefix`.

Paraphrase transfer: `transfer_mrpc_as_qqp` is MRPC written exactly like a QQP example
('question1: ... question2: ...') with its labels mapped into QQP's label space
(equivalent -> duplicate, not_equivalent -> not_duplicate), so a QQP prompt is evaluated
zero-shot; `transfer_qqp_as_mrpc` is the reverse. Mixtures `transfer_qqp_to_mrpc` and
`transfer_mrpc_to_qqp` pair the source task (no-prefix format) with the target.
"""

from __future__ import annotations

from prompt_jax.data import metrics as m
from prompt_jax.data import postprocessors as post
from prompt_jax.data import preprocessors as pre
from prompt_jax.data.glue import GLUE_TASKS, KvTask, glue_task_name, kv_spec
from prompt_jax.data.registry import MixtureSpec, TaskSpec, add_mixture, add_task
from prompt_jax.data.sources import tfds_source_factory

SQUAD_TFDS = "squad/v1.1:3.0.0"
MRQA_VERSION = "1.0.0"
MRQA_OUT_OF_DOMAIN = ("textbook_qa", "bio_asq", "race", "relation_extraction", "duo_rc",
                      "drop")
# Index-aligned label spaces: MRPC's i-th label means QQP's i-th label.
MRPC_TO_QQP = {"not_equivalent": "not_duplicate", "equivalent": "duplicate"}


def _suffix(use_prefix: bool) -> str:
  return "" if use_prefix else "_noprefix"


def squad_spec(use_prefix: bool = True) -> TaskSpec:
  """SQuAD v1.1 in T5's format (`squad`, `squad_noprefix`)."""
  return TaskSpec(
      name="squad" + _suffix(use_prefix),
      make_source=tfds_source_factory(SQUAD_TFDS, {"train": "train",
                                                   "validation": "validation"}),
      preprocessors=(pre.squad(use_prefix),),
      postprocess_fn=post.qa_answers, metric_fns=(m.qa_em_f1,),
      tfds_datasets=(SQUAD_TFDS,),
      description="SQuAD v1.1 (EM, F1)" + ("" if use_prefix else " (no first word)"))


def mrqa_spec(domain: str, use_prefix: bool = True, *, strip_markers: bool = False,
              name: str | None = None) -> TaskSpec:
  """One MRQA out-of-domain dev set in the reference repository's format.

  Args:
    domain: TFDS `mrqa` config ('drop', ...).
    use_prefix: keep the first word ('question:').
    strip_markers: non-default; drop the [PAR] / [TLE] / [DOC] / [SEP] context markers.
    name: registered name (default `mrqa_<domain>[_noprefix]`).
  """
  tfds_name = f"mrqa/{domain}:{MRQA_VERSION}"
  return TaskSpec(
      name=name or f"mrqa_{domain}" + _suffix(use_prefix),
      make_source=tfds_source_factory(tfds_name, {"validation": "test"}),
      preprocessors=(pre.mrqa(use_prefix, strip_markers=strip_markers),),
      postprocess_fn=post.qa_answers, metric_fns=(m.qa_em_f1,),
      tfds_datasets=(tfds_name,), description=f"MRQA {domain} dev (zero-shot from SQuAD)")


def _as_other(data: KvTask, shown_as: KvTask, name: str, description: str) -> TaskSpec:
  """`data`'s examples written with `shown_as`'s field names and label strings."""
  fields = tuple((shown, path) for (shown, _), (_, path) in zip(shown_as.fields, data.fields))
  task = KvTask(name, data.tfds_name, shown_as.prefix, fields, shown_as.labels,
                shown_as.metric_fns, splits={"validation": "validation", "test": "test"},
                description=description)
  return kv_spec(task, name, use_prefix=False)


def register_transfer() -> None:
  """Registers the MRQA and QQP <-> MRPC transfer tasks and mixtures."""
  for use_prefix in (True, False):
    squad = add_task(squad_spec(use_prefix))
    ood = [add_task(mrqa_spec(d, use_prefix)) for d in MRQA_OUT_OF_DOMAIN]
    add_mixture(MixtureSpec("mrqa_ood" + _suffix(use_prefix), tuple((t, 1.0) for t in ood),
                            description="MRQA out-of-domain dev sets"))
    add_mixture(MixtureSpec("mrqa_transfer" + _suffix(use_prefix),
                            ((squad, 1.0),) + tuple((t, 1.0) for t in ood),
                            description="train SQuAD, evaluate MRQA out-of-domain"))
  qqp, mrpc = GLUE_TASKS["qqp"], GLUE_TASKS["mrpc"]
  assert tuple(MRPC_TO_QQP) == mrpc.labels and tuple(MRPC_TO_QQP.values()) == qqp.labels
  add_task(_as_other(mrpc, qqp, "transfer_mrpc_as_qqp",
                     "MRPC written as QQP, QQP labels (zero-shot target)"))
  add_task(_as_other(qqp, mrpc, "transfer_qqp_as_mrpc",
                     "QQP written as MRPC, MRPC labels (zero-shot target)"))
  add_mixture(MixtureSpec("transfer_qqp_to_mrpc", ((glue_task_name("qqp", False), 1.0),
                                                   ("transfer_mrpc_as_qqp", 1.0)),
                          description="train QQP, evaluate MRPC zero-shot"))
  add_mixture(MixtureSpec("transfer_mrpc_to_qqp", ((glue_task_name("mrpc", False), 1.0),
                                                   ("transfer_qqp_as_mrpc", 1.0)),
                          description="train MRPC, evaluate QQP zero-shot"))
