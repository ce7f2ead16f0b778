"""Formats and metrics against the `t5` package (0.9.4) as an independent reference.

Skipped when `t5` is absent (`make test` does not install it). To run it:

  pip install --no-deps t5==0.9.4 && pip install babel editdistance rouge-score sacrebleu

(`--no-deps` keeps mesh-tensorflow and torch out; `t5.data` / `t5.evaluation` need only
those four small packages on top of this project's TensorFlow / seqio stack; setup.py's
`t5ref` extra lists them.)

Every task runs on hand-written records in the real TFDS feature specs through T5's own
preprocessor and through ours; our with-prefix strings must equal T5's, our no-prefix
strings T5's minus the first word (the reference repository's `remove_first_text_token`
rule, restated here). MRQA has no T5 task: its reference is the prompt-tuning repository's
conversion (whitespace normalised as Python's `re` does, then T5's punctuation spacing),
assembled below from T5's helpers. Metrics: the same predictions, invalid and empty ones
included, through T5's postprocessors and metrics and through our registered tasks.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

t5_pre = pytest.importorskip("t5.data.preprocessors")
t5_post = pytest.importorskip("t5.data.postprocessors")
t5_glue = pytest.importorskip("t5.data.glue_utils")
t5_metrics = pytest.importorskip("t5.evaluation.metrics")

# pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_jax.data import glue, preprocessors, registry, superglue
from tests.data import test_glue_tasks, test_superglue_tasks, test_xlingual_transfer
from tests.data.data_helpers import _signature, mock_examples, run_task, texts

Record = Mapping[str, Any]


def _first_word_removed(text: str) -> str:
  return re.sub(r"^[^ ]* ", "", text, count=1)


def _t5_outputs(tfds_name: str, preprocess: Callable, records: Sequence[Record]
                ) -> list[dict[str, Any]]:
  builder = tfds.builder(tfds_name.split(":")[0])
  spec = _signature(builder.info.features.get_tensor_spec(), records[0], tfds_name)
  ds = tf.data.Dataset.from_generator(lambda: iter(records), output_signature=spec)
  return list(preprocess(ds).as_numpy_iterator())


def _t5_texts(outputs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
  return [(o["inputs"].decode(), o["targets"].decode()) for o in outputs]


def _config(tfds_name: str):
  return tfds.builder(tfds_name.split(":")[0]).builder_config


def _t5_kv_preprocessor(tfds_name: str) -> Callable:
  config = _config(tfds_name)
  preprocess = t5_glue.get_glue_text_preprocessor(config)
  if config.name != "axb":
    return preprocess
  rekey = functools.partial(t5_pre.rekey, key_map={
      "premise": "sentence1", "hypothesis": "sentence2", "label": "label", "idx": "idx"})
  return lambda ds: preprocess(rekey(ds))


def _squad_reference(ds: tf.data.Dataset) -> tf.data.Dataset:
  return t5_pre.squad(ds)


def _python_whitespace(text: str) -> str:
  return re.sub(r"\s+", " ", text, flags=re.MULTILINE)


def _mrqa_reference(records: Sequence[Record]) -> list[tuple[str, str, list[str]]]:
  """The prompt-tuning repository's MRQA pipeline: its jsonl -> tsv whitespace step in
  Python, then T5's `_pad_punctuation` / `_string_join` as its `preprocess_tsv_to_qa`."""
  pad = t5_pre._pad_punctuation  # pylint: disable=protected-access
  join = t5_pre._string_join  # pylint: disable=protected-access

  def prepare(text: str) -> tf.Tensor:
    return pad(_python_whitespace(text))

  out = []
  for r in records:
    answer = prepare(r["detected_answers"]["text"][0])
    answers = [prepare(a).numpy().decode() for a in r["answers"]]
    inputs = join(["question:", prepare(r["question"]), "context:", prepare(r["context"])])
    out.append((inputs.numpy().decode(), answer.numpy().decode(), answers))
  return out


# ------------------------------------------------------------------ records per task

_GLUE_EXTRA = {
    "stsb": [{"sentence1": "A.", "sentence2": "B.", "label": s, "idx": i}
             for i, s in enumerate([3.86, 4.95, 0.0, 1.05, 2.5])],
}

_SG_EXTRA = {
    "multirc": [test_superglue_tasks.EDGE_CASES["multirc"][1]],
    "record": [test_superglue_tasks.EDGE_CASES["record"][1]],
    "wsc": [test_superglue_tasks.EDGE_CASES["wsc"][1]] + [
        {"text": text, "span1_index": 0, "span1_text": "Ann", "span2_index": index,
         "span2_text": pronoun, "label": label, "idx": i}
        for i, (text, index, pronoun, label) in enumerate([
            ("Ann told Bea she won .", 3, "she", 1),
            ("Ann saw X and then her", 5, "her", 0),
            (list(preprocessors.WSC_KNOWN_BAD_SPANS)[0], 22, "him", 1),
            (list(preprocessors.WSC_KNOWN_BAD_SPANS)[1], 31, "it", 0),
            ("Ann , who met Bea , said she (really) won.", 7, "she", -1),
        ])],
    "boolq": [test_superglue_tasks.EDGE_CASES["boolq"][1]],
    "axb": [{"sentence1": "S1 .", "sentence2": "S2 !", "label": 0, "idx": 4}],
}


def _glue_cases():
  for task, (tfds_split, split, example, _, _) in test_glue_tasks.CASES.items():
    yield f"glue_{task}", glue.GLUE_TASKS[task].tfds_name, tfds_split, split, [example]
  for task, split, example, _, _ in test_glue_tasks.EDGE_CASES:
    yield f"glue_{task}", glue.GLUE_TASKS[task].tfds_name, split, split, [example]
  for task, records in _GLUE_EXTRA.items():
    yield f"glue_{task}", glue.GLUE_TASKS[task].tfds_name, "validation", "validation", records


def _kv_super_glue_cases():
  for task, (tfds_split, split, example, _, _) in test_superglue_tasks.CASES.items():
    if task in superglue.SUPER_GLUE_KV_TASKS or task == "multirc":
      yield f"super_glue_{task}", tfds_split, split, [example]
  for task, records in _SG_EXTRA.items():
    if task in superglue.SUPER_GLUE_KV_TASKS or task == "multirc":
      split = "test" if task == "axb" else "validation"
      yield f"super_glue_{task}", split, split, records


def _ours(name: str, tfds_split: str, split: str, records: Sequence[Record]):
  with mock_examples({tfds_split: records}):
    return run_task(name, split), run_task(f"{name}_noprefix", split)


def _assert_flavours(ours, bare, expected: Sequence[tuple[str, str]]) -> None:
  assert texts(ours) == list(expected)
  assert texts(bare) == [(_first_word_removed(i), t) for i, t in expected]


@pytest.mark.parametrize("case", list(_glue_cases()), ids=lambda c: c[0])
def test_glue_strings_equal_t5s(prepared, case):
  name, tfds_name, tfds_split, split, records = case
  expected = _t5_texts(_t5_outputs(tfds_name, _t5_kv_preprocessor(tfds_name), records))
  _assert_flavours(*_ours(name, tfds_split, split, records), expected)


@pytest.mark.parametrize("case", list(_kv_super_glue_cases()), ids=lambda c: c[0])
def test_super_glue_classification_strings_equal_t5s(prepared, case):
  name, tfds_split, split, records = case
  tfds_name = registry.task_spec(name).tfds_datasets[0]
  expected = _t5_texts(_t5_outputs(tfds_name, _t5_kv_preprocessor(tfds_name), records))
  _assert_flavours(*_ours(name, tfds_split, split, records), expected)


def test_wsc_strings_equal_t5s_simple_wsc(prepared):
  records = [test_superglue_tasks.CASES["wsc"][2]] + _SG_EXTRA["wsc"]
  tfds_name = "super_glue/wsc.fixed:1.0.2"
  for split, only_correct in (("validation", False), ("train", True)):
    if split == "train":  # T5's filter casts label -1 to True; real train labels are 0 / 1.
      records = [r for r in records if r["label"] >= 0]
    reference = functools.partial(t5_pre.wsc_simple, correct_referent_only=only_correct)
    expected = _t5_texts(_t5_outputs(tfds_name, reference, records))
    _assert_flavours(*_ours("super_glue_wsc", split, split, records), expected)


def test_record_strings_equal_t5s(prepared):
  records = [test_superglue_tasks.CASES["record"][2]] + _SG_EXTRA["record"]
  t5_out = _t5_outputs("super_glue/record:1.0.2", t5_pre.record, records)
  # Training: one example per answer, exactly as T5.
  _assert_flavours(*_ours("super_glue_record", "train", "train", records), _t5_texts(t5_out))
  # Evaluation: the first of T5's copies of each query (T5 scores one per query too).
  first = {}
  for o in t5_out:
    first.setdefault((int(o["idx/passage"]), int(o["idx/query"])), o)
  ours, bare = _ours("super_glue_record", "validation", "validation", records)
  _assert_flavours(ours, bare, _t5_texts(list(first.values())))
  assert [list(o["answers"]) for o in ours] == [list(o["answers"]) for o in first.values()]


_SQUAD_RECORDS = [
    {"question": "Where's (it)?", "context": "In  Paris, France.\n", "id": "a", "title": "T",
     "answers": {"text": ["Paris", "Paris, France."], "answer_start": [4, 4]}},
    {"question": "Who—\"really\"—won in 1999/2000?", "context": "O’Neil won ($5; 50%)…",
     "id": "b", "title": "T", "answers": {"text": ["O’Neil"], "answer_start": [0]}},
    # No-break space: T5's SQuAD collapses only ASCII whitespace (unlike the MRQA path).
    {"question": "Q:\tx", "context": "a\u00a0b (c)", "id": "c", "title": "T",
     "answers": {"text": ["b (c)", "c"], "answer_start": [2, 5]}},
]


def test_squad_strings_equal_t5s(prepared):
  t5_out = _t5_outputs("squad/v1.1:3.0.0", _squad_reference, _SQUAD_RECORDS)
  with mock_examples({"validation": _SQUAD_RECORDS}):
    ours, bare = run_task("squad", "validation"), run_task("squad_noprefix", "validation")
  _assert_flavours(ours, bare, _t5_texts(t5_out))
  assert [list(o["answers"]) for o in ours] == [list(o["answers"]) for o in t5_out]


_MRQA_RECORDS = [
    test_xlingual_transfer.MRQA_EXAMPLE,
    {"question": "Who did\nit?", "context": "[TLE] Title [PAR] Ann\u00a0 did\u2009it.\t[SEP]",
     "answers": ["Ann", "ann."], "detected_answers": {"text": ["Ann\u3000"]}},
    {"question": "Why\r\n(not)?", "context": "[DOC] [TLE] X [PAR] Because\x0bof\x1cit.",
     "answers": ["of it"], "detected_answers": {"text": ["Because"]}},
]


def test_mrqa_strings_equal_the_reference_repositorys(prepared):
  expected = _mrqa_reference(_MRQA_RECORDS)
  with mock_examples({"test": _MRQA_RECORDS}):
    ours = run_task("mrqa_bio_asq", "validation")
    bare = run_task("mrqa_bio_asq_noprefix", "validation")
  _assert_flavours(ours, bare, [(i, t) for i, t, _ in expected])
  assert [[a.decode() for a in o["answers"]] for o in ours] == [a for _, _, a in expected]


# ------------------------------------------------------------------------------ metrics


def assert_same_metrics(ours: Mapping[str, float], reference: Mapping[str, float]) -> None:
  """Every metric T5 reports, under T5's name, with T5's value (NaN == NaN)."""
  assert reference, "T5 reported no metric: the comparison would be vacuous"
  assert set(reference) <= set(ours), (sorted(ours), sorted(reference))
  for key, value in reference.items():
    value = float(value)
    if math.isnan(value):
      assert math.isnan(ours[key]), key
    else:
      assert ours[key] == pytest.approx(value, abs=1e-9), key


def _ours_metrics(name: str, examples, targets, predictions) -> dict[str, float]:
  spec = registry.task_spec(name)
  post = spec.postprocess_fn
  t = [post(x, example=ex, is_target=True) for x, ex in zip(targets, examples)]
  p = [post(x, example=ex, is_target=False) for x, ex in zip(predictions, examples)]
  out: dict[str, float] = {}
  for fn in spec.metric_fns:
    out.update({k: float(v) for k, v in fn(t, p).items()})
  return out


def _t5_metric_values(postprocess, metric_fns, examples, targets, predictions):
  t = [postprocess(x, example=ex, is_target=True) for x, ex in zip(targets, examples)]
  p = [postprocess(x, example=ex, is_target=False) for x, ex in zip(predictions, examples)]
  out = {}
  for fn in metric_fns:
    out.update(fn(t, p))
  return out


def _label_predictions(labels: Sequence[str], n: int, seed: int) -> tuple[list, list]:
  """Targets over `labels` and predictions mixing right, wrong and invalid outputs."""
  rng = np.random.default_rng(seed)
  invalid = ["", " ", "garbage", "other garbage", f" {labels[-1]}", labels[0].lower() + "x",
             labels[-1] + " "]
  targets = [labels[i] for i in rng.integers(0, len(labels), n)]
  pool = list(labels) + invalid
  predictions = [t if rng.random() < 0.5 else pool[rng.integers(0, len(pool))] for t in targets]
  return targets, predictions


_CLASSIFICATION = [("glue", t) for t in ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte",
                                        "wnli")] + [
    ("super_glue", t) for t in ("boolq", "cb", "copa", "rte", "wic")]


@pytest.mark.parametrize("benchmark, task", _CLASSIFICATION, ids=lambda x: str(x))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_t5s(benchmark, task, seed):
  name = f"{benchmark}_{task}"
  labels = registry.task_labels(name)
  config = _config(registry.task_spec(name).tfds_datasets[0])
  metric_fns = (t5_glue.get_glue_metric(task) if benchmark == "glue"
                else t5_glue.get_super_glue_metric(task))
  targets, predictions = _label_predictions(labels, 40, seed)
  if seed == 2:
    predictions = ["nope"] * len(targets)  # Every prediction invalid.
  examples = [{}] * len(targets)
  reference = _t5_metric_values(t5_glue.get_glue_postprocess_fn(config), metric_fns,
                                examples, targets, predictions)
  assert_same_metrics(_ours_metrics(name, examples, targets, predictions), reference)


def test_stsb_metrics_equal_t5s():
  targets = ["3.8", "5.0", "0.0", "1.2", "2.4", "4.4"]
  examples = [{}] * len(targets)
  for predictions in (["3.6", "four", "0.2", "", "2.4", "5.0"], ["2.0"] * 6):
    reference = _t5_metric_values(t5_post.string_to_float, t5_glue.get_glue_metric("stsb"),
                                  examples, targets, predictions)
    assert_same_metrics(_ours_metrics("glue_stsb", examples, targets, predictions), reference)


def test_multirc_metrics_equal_t5s():
  rng = np.random.default_rng(3)
  examples, targets, predictions = [], [], []
  for question in range(12):
    for answer in range(int(rng.integers(1, 5))):
      examples.append({"idx": {"paragraph": question // 3, "question": question,
                               "answer": answer}, "idx/question": question})
      targets.append(["False", "True"][rng.integers(0, 2)])
      choice = rng.random()
      predictions.append(targets[-1] if choice < 0.6 else
                         ["True", "False", "", "true", "False "][rng.integers(0, 5)])
  reference = _t5_metric_values(t5_post.multirc, t5_glue.get_super_glue_metric("multirc"),
                                examples, targets, predictions)
  assert_same_metrics(_ours_metrics("super_glue_multirc", examples, targets, predictions), reference)


def test_wsc_metrics_equal_t5s():
  candidates = ["The city councilmen", "Bob's hat", "the dog", "Mark", "his mother"]
  predictions = ["city councilmen", "councilmen.", "", "the", "Bob", "bob's hat", "hat",
                 "dog", "The Dog", "mark", " Mark ", "mother", "her mother", "its dog",
                 "the  dog", "X"]
  examples, targets, preds = [], [], []
  for i, candidate in enumerate(candidates):
    for j, prediction in enumerate(predictions):
      label = (i + j) % 2
      examples.append({"span1_text": candidate.encode(), "label": label,
                       "targets_pretokenized": candidate.encode()})
      targets.append(candidate)
      preds.append(prediction)
  reference = _t5_metric_values(t5_post.wsc_simple, [t5_metrics.accuracy], examples, targets,
                                preds)
  assert_same_metrics(_ours_metrics("super_glue_wsc", examples, targets, preds), reference)
  per_example = [t5_post.wsc_simple(p, example=ex) for p, ex in zip(preds, examples)]
  ours = registry.task_spec("super_glue_wsc").postprocess_fn
  assert [ours(p, example=ex) for p, ex in zip(preds, examples)] == per_example


_QA_CASES = [  # (gold answers, prediction)
    (["Paris", "in Paris"], "paris"), (["The Cat"], "cat!"), (["the"], ""), (["a"], "an"),
    (["big black cat"], "black cat sat"), (["Paris , France . "], "Paris, France"),
    (["O’Neil"], "O'Neil"), (["one", "two three"], "two"), (["x"], "y"), (["cat cat"], "cat"),
]


def test_squad_metrics_equal_t5s():
  golds = [g for g, _ in _QA_CASES]
  predictions = [p for _, p in _QA_CASES]
  examples = [{"answers": [a.encode() for a in g]} for g in golds]
  reference = _t5_metric_values(t5_post.qa, [t5_metrics.squad], examples, golds, predictions)
  for name in ("squad", "mrqa_drop", "squad_noprefix"):
    assert_same_metrics(_ours_metrics(name, examples, golds, predictions), reference)


def test_record_metrics_equal_t5s_with_several_answers():
  golds = [g for g, _ in _QA_CASES]
  predictions = [p for _, p in _QA_CASES]
  # T5 scores one copy per answer, then keeps the first of each query: build those copies.
  t5_examples, t5_targets, t5_predictions = [], [], []
  for i, (g, p) in enumerate(zip(golds, predictions)):
    for answer in g:
      t5_examples.append({"answers": [a.encode() for a in g], "idx/passage": i,
                          "idx/query": 0})
      t5_targets.append(answer)
      t5_predictions.append(p)
  reference = _t5_metric_values(t5_post.record, t5_glue.get_super_glue_metric("record"),
                                t5_examples, t5_targets, t5_predictions)
  examples = [{"answers": [a.encode() for a in g]} for g in golds]
  assert_same_metrics(_ours_metrics("super_glue_record", examples, [g[0] for g in golds], predictions),
         reference)
