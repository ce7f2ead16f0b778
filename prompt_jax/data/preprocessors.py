"""Text-to-text preprocessors: raw TFDS examples -> `inputs` / `targets` strings.

Every factory here returns a `dataset -> dataset` function for a SeqIO task's preprocessor
list; tokenisation and EOS are added after them by the registry. The shared format is T5's:

  inputs  = "<task word> <field>: <text> <field>: <text> ..."   (with the task prefix)
  inputs  = "<field>: <text> <field>: <text> ..."               (without it; Lester et al.)
  targets = the label's name ('entailment', 'True', ...) or the answer text

Fields appear in the order the task lists them (T5's GLUE / SuperGLUE order: the feature
names sorted alphabetically). A missing label (-1, unlabeled test splits) becomes '<unk>'.
Features other than `inputs` / `targets` that evaluation needs (`idx`, `label`, `answers`,
`span1_text`) are kept beside them.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import tensorflow as tf

from prompt_jax.data.sources import get_feature

Preprocessor = Callable[[tf.data.Dataset], tf.data.Dataset]
Fields = Sequence[tuple[str, str]]  # (name shown in the text, feature path)
UNKNOWN_LABEL = "<unk>"
_AUTOTUNE = tf.data.AUTOTUNE


def join_fields(example: Mapping[str, tf.Tensor], prefix: str | None, fields: Fields) -> tf.Tensor:
  """'<prefix> name1: text1 name2: text2' as a scalar string tensor (no prefix if None)."""
  parts = [] if prefix is None else [tf.constant(prefix)]
  for shown, path in fields:
    parts += [tf.constant(f"{shown}:"), get_feature(example, path)]
  return tf.strings.join(parts, separator=" ")


def label_to_string(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """ClassLabel int -> its name; negative (missing) labels -> '<unk>'."""
  names = tf.constant(list(label_names))
  label = tf.cast(label, tf.int32)
  return tf.where(label < 0, tf.constant(UNKNOWN_LABEL), tf.gather(names, tf.maximum(label, 0)))


def _keep(example: Mapping[str, tf.Tensor], keep: Sequence[str]) -> dict[str, tf.Tensor]:
  return {k: example[k] for k in keep if k in example}


def classification(prefix: str | None, fields: Fields, label_names: Sequence[str], *,
                   keep: Sequence[str] = ("idx", "label")) -> Preprocessor:
  """Key-value inputs, label name as target (GLUE / SuperGLUE classification tasks)."""

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def fn(ex):
      return {"inputs": join_fields(ex, prefix, fields),
              "targets": label_to_string(ex["label"], label_names), **_keep(ex, keep)}
    return dataset.map(fn, num_parallel_calls=_AUTOTUNE)

  return preprocess


def stsb_target(score: tf.Tensor) -> tf.Tensor:
  """STS-B similarity as T5 writes it: rounded to the nearest 0.2, one decimal ('3.8')."""
  return tf.strings.as_string(tf.round(tf.cast(score, tf.float32) * 5.0) / 5.0, precision=1)


def regression(prefix: str | None, fields: Fields) -> Preprocessor:
  """STS-B: key-value inputs, the rounded score as a string target."""

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def fn(ex):
      return {"inputs": join_fields(ex, prefix, fields), "targets": stsb_target(ex["label"]),
              "idx": ex["idx"], "label": ex["label"]}
    return dataset.map(fn, num_parallel_calls=_AUTOTUNE)

  return preprocess


def remove_markup(text: tf.Tensor) -> tf.Tensor:
  """Drops HTML-like tags (MultiRC paragraphs carry <b>, <br>) and collapses whitespace."""
  text = tf.strings.regex_replace(text, r"<[^>]*>", " ")
  return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def clean_fields(paths: Sequence[str], cleaner: Callable[[tf.Tensor], tf.Tensor]
                 ) -> Preprocessor:
  """Applies `cleaner` to the string features at `paths` (top-level names)."""

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def fn(ex):
      ex = dict(ex)
      for path in paths:
        ex[path] = cleaner(ex[path])
      return ex
    return dataset.map(fn, num_parallel_calls=_AUTOTUNE)

  return preprocess


def mark_span(text: tf.Tensor, word_index: tf.Tensor, span_text: tf.Tensor) -> tf.Tensor:
  """Wraps the words of `span_text`, starting at word `word_index` of `text`, in '*'."""
  words = tf.strings.split(text, sep=" ")
  n = tf.size(tf.strings.split(span_text, sep=" "))
  i = tf.cast(word_index, tf.int32)
  span = tf.strings.reduce_join(words[i:i + n], separator=" ")
  marked = tf.strings.join(["*", span, "*"])
  pieces = tf.concat([words[:i], [marked], words[i + n:]], axis=0)
  return tf.strings.reduce_join(pieces, separator=" ")


def wsc_referent(prefix: str | None) -> Preprocessor:
  """WSC as referent generation: pronoun marked '*...*' in the text, target = referent.

  inputs 'wsc text: Mark told Pete many lies about *him*self ...' (prefix 'wsc' optional),
  targets = span1_text (the candidate referent). The gold label says whether that candidate
  is the pronoun's referent; the postprocessor compares a prediction with span1_text.
  """

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def fn(ex):
      marked = mark_span(ex["text"], ex["span2_index"], ex["span2_text"])
      return {"inputs": join_fields({"text": marked}, prefix, [("text", "text")]),
              "targets": ex["span1_text"], "span1_text": ex["span1_text"],
              "label": ex["label"], "idx": ex["idx"]}
    return dataset.map(fn, num_parallel_calls=_AUTOTUNE)

  return preprocess


def keep_positive_examples(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Keeps examples with label 1 (WSC training: only true referents are generated)."""
  return dataset.filter(lambda ex: tf.equal(ex["label"], 1))


def expand_answers(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """One example per gold answer (ReCoRD training); examples without answers kept once."""

  def fn(ex):
    answers = ex["answers"]
    n = tf.size(answers)
    answers = tf.cond(n > 0, lambda: answers, lambda: tf.constant([UNKNOWN_LABEL]))
    per_answer = tf.data.Dataset.from_tensor_slices(answers)
    return per_answer.map(lambda a: {**ex, "answers": tf.reshape(a, [1])})

  return dataset.flat_map(fn)


def _first_or_unknown(values: tf.Tensor) -> tf.Tensor:
  return tf.cond(tf.size(values) > 0, lambda: values[0], lambda: tf.constant(UNKNOWN_LABEL))


def record(prefix: str | None) -> Preprocessor:
  """ReCoRD: 'record query: Q entities: e1, e2 passage: P' -> first gold answer.

  The passage's '@highlight' summary lines become ' - ' separated; all gold answers are
  kept as `answers` (EM / F1 take the max over them).
  """

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def fn(ex):
      passage = tf.strings.regex_replace(ex["passage"], r"\s*\n@highlight\n", " - ")
      view = {"query": ex["query"], "passage": passage,
              "entities": tf.strings.reduce_join(ex["entities"], separator=", ")}
      fields = [("query", "query"), ("entities", "entities"), ("passage", "passage")]
      return {"inputs": join_fields(view, prefix, fields),
              "targets": _first_or_unknown(ex["answers"]), "answers": ex["answers"],
              "idx": ex["idx"]}
    return dataset.map(fn, num_parallel_calls=_AUTOTUNE)

  return preprocess


def strip_mrqa_markers(text: tf.Tensor) -> tf.Tensor:
  """Replaces MRQA's [PAR] / [TLE] / [DOC] / [SEP] context markers with spaces."""
  text = tf.strings.regex_replace(text, r"\[(PAR|TLE|DOC|SEP)\]", " ")
  return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def question_answering(prefix: str | None, answers_path: str, *,
                       clean_context: bool = False) -> Preprocessor:
  """SQuAD-style QA: 'question: Q context: C' -> first gold answer; `answers` kept."""

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def fn(ex):
      context = strip_mrqa_markers(ex["context"]) if clean_context else ex["context"]
      answers = get_feature(ex, answers_path)
      view = {"question": ex["question"], "context": context}
      return {"inputs": join_fields(view, prefix, [("question", "question"),
                                                  ("context", "context")]),
              "targets": _first_or_unknown(answers), "answers": answers}
    return dataset.map(fn, num_parallel_calls=_AUTOTUNE)

  return preprocess


def select_xnli_language(language: str) -> Preprocessor:
  """XNLI: keeps the `premise` / `hypothesis` of one language as plain string features."""

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def fn(ex):
      hyp = ex["hypothesis"]
      # A missing language makes position[0] fail loudly (empty slice), never silently.
      position = tf.where(tf.equal(hyp["language"], language))[:, 0]
      return {"premise": ex["premise"][language],
              "hypothesis": tf.gather(hyp["translation"], position[0]), "label": ex["label"]}
    return dataset.map(fn, num_parallel_calls=_AUTOTUNE)

  return preprocess


def raw_text_classification(text_key: str, target_key: str) -> Preprocessor:
  """inputs = the text itself, targets = an already verbalized label (SIB-200)."""

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def fn(ex):
      return {"inputs": ex[text_key], "targets": ex[target_key], **_keep(ex, ("index_id",))}
    return dataset.map(fn, num_parallel_calls=_AUTOTUNE)

  return preprocess
