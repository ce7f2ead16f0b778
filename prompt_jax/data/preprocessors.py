"""Text-to-text preprocessors: raw TFDS examples -> `inputs` / `targets` strings.

Every factory here returns a `dataset -> dataset` function for a SeqIO task's preprocessor
list; tokenisation and EOS are added after them by the registry. The strings are T5's
(the `t5` package's GLUE / SuperGLUE / SQuAD preprocessors, and the prompt-tuning
reference repository's MRQA preprocessing), in two flavours:

  with prefix:    T5's string as it is ('rte sentence1: ... sentence2: ...',
                  'wsc: ... *him* ...', 'question: ... context: ...')
  without prefix: T5's string minus its first space-delimited word (Lester et al.'s
                  `remove_first_text_token`): 'sentence1: ... sentence2: ...'

Key-value fields appear in T5's order: the feature names sorted alphabetically, except
MultiRC (question, answer, paragraph) and WiC (sentence1, sentence2, word). A missing label
(-1, unlabeled test splits) becomes '<unk>'. Features other than `inputs` / `targets`
that evaluation needs (`idx`, `label`, `answers`, `span1_text`) are kept beside them.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import tensorflow as tf

from prompt_jax.data.sources import get_feature

Preprocessor = Callable[[tf.data.Dataset], tf.data.Dataset]
Fields = Sequence[tuple[str, str]]  # (name shown in the text, feature path)
UNKNOWN_LABEL = "<unk>"
_AUTOTUNE = tf.data.AUTOTUNE


def drop_first_word(text: tf.Tensor) -> tf.Tensor:
  """Removes everything up to and including the first space (the no-prefix flavour)."""
  return tf.strings.regex_replace(text, r"^[^ ]* ", "", replace_global=False)


def _flavour(text: tf.Tensor, use_prefix: bool) -> tf.Tensor:
  return text if use_prefix else drop_first_word(text)


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


def _map(fn: Callable[[dict], dict]) -> Preprocessor:
  return lambda dataset: dataset.map(fn, num_parallel_calls=_AUTOTUNE)


def classification(prefix: str | None, fields: Fields, label_names: Sequence[str], *,
                   keep: Sequence[str] = ("idx", "label"),
                   clean: Callable[[tf.Tensor], tf.Tensor] | None = None) -> Preprocessor:
  """Key-value inputs, label name as target (GLUE / SuperGLUE classification tasks).

  Args:
    prefix: the task word, or None for the no-prefix flavour.
    fields: (shown name, feature path) in input order.
    label_names: label names in ClassLabel order.
    keep: features passed through for evaluation.
    clean: applied to the joined inputs string (MultiRC's markup removal).
  """

  def fn(ex):
    inputs = join_fields(ex, prefix, fields)
    return {"inputs": inputs if clean is None else clean(inputs),
            "targets": label_to_string(ex["label"], label_names), **_keep(ex, keep)}

  return _map(fn)


def stsb_target(score: tf.Tensor) -> tf.Tensor:
  """STS-B similarity as T5 writes it: rounded to the nearest 0.2, one decimal ('3.8')."""
  return tf.strings.as_string(tf.round(tf.cast(score, tf.float32) * 5.0) / 5.0, precision=1)


def regression(prefix: str | None, fields: Fields) -> Preprocessor:
  """STS-B: key-value inputs, the rounded score as a string target."""
  return _map(lambda ex: {"inputs": join_fields(ex, prefix, fields),
                          "targets": stsb_target(ex["label"]),
                          "idx": ex["idx"], "label": ex["label"]})


def multirc_markup(text: tf.Tensor) -> tf.Tensor:
  """T5's MultiRC markup removal: '<br>' -> ' ', '<b>' / '</b>' deleted, nothing else.

  Deleting (not spacing) the bold tags keeps a tag that touches a word glued to it
  ('<b>Sent 1: </b>Ann' -> 'Sent 1: Ann', 'x</b>y' -> 'xy'); whitespace is not collapsed.
  """
  text = tf.strings.regex_replace(text, "<br>", " ")
  return tf.strings.regex_replace(text, "</?b>", "")


# --------------------------------------------------------------------------------- WSC

# wsc.fixed texts whose span2_index does not point at the pronoun (T5 special-cases
# them): text -> the text to mark, with the pronoun written as the word 'X'.
WSC_KNOWN_BAD_SPANS = {
    ("The boy continued to whip the pony , and eventually the pony threw him over. John "
     "laughed out quite loud. \"Good for him,\" he said. "):
        ("The boy continued to whip the pony , and eventually the pony threw him over. "
         "John laughed out quite loud. \"Good for X ,\" he said."),
    ("When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the "
     "magic pebble in an iron safe . Some day they might want to use it , but really for "
     "now, what more could they wish for?"):
        ("When they had eventually calmed down a bit , and had gotten home, Mr. Farley put "
         "the magic pebble in an iron safe . Some day they might want to use X , but really "
         "for now, what more could they wish for?"),
}
_PLACEHOLDER = "X"


def _with_placeholder(text: tf.Tensor, word_index: tf.Tensor, span_text: tf.Tensor
                      ) -> tf.Tensor:
  """`text` with the span's words (from word `word_index`, split on ' ') replaced by 'X'.

  Written as 'left X right' even when a side is empty, as T5 does; the two known-bad
  texts get their corrected form instead.
  """
  words = tf.strings.split(text, sep=" ")
  n = tf.size(tf.strings.split(span_text, sep=" "))
  i = tf.cast(word_index, tf.int32)
  marked = tf.strings.join([tf.strings.reduce_join(words[:i], separator=" "), _PLACEHOLDER,
                            tf.strings.reduce_join(words[i + n:], separator=" ")],
                           separator=" ")
  for bad, fixed in WSC_KNOWN_BAD_SPANS.items():
    marked = tf.where(tf.equal(text, bad), tf.constant(fixed), marked)
  return marked


def mark_pronoun(text: tf.Tensor, word_index: tf.Tensor, span_text: tf.Tensor) -> tf.Tensor:
  """T5's simple-WSC marking: the pronoun (word `word_index`) becomes '*<span_text>*'.

  As in T5, every space-delimited 'X' in the placeholder text is marked, so a text that
  itself contains the word 'X' gets it marked too.
  """
  placeholder = _with_placeholder(text, word_index, span_text)
  # Literal replacement text: escape what regex_replace's rewrite string interprets.
  pronoun = tf.strings.regex_replace(span_text, r"\\", r"\\\\")
  return tf.strings.regex_replace(placeholder, f" {_PLACEHOLDER} ",
                                  tf.strings.join([" *", pronoun, "* "]))


def wsc_referent(use_prefix: bool) -> Preprocessor:
  """WSC as referent generation, T5's simple format (Lester et al.'s WSC).

  inputs 'wsc: Mark told Pete many lies about himself , which Pete included in *his*
  book .' ('Mark told ...' without the prefix), targets = span1_text (the candidate). The
  gold label says whether that candidate is the pronoun's referent; the postprocessor
  compares a prediction with span1_text.
  """

  def fn(ex):
    inputs = tf.strings.join(["wsc:", mark_pronoun(ex["text"], ex["span2_index"],
                                                   ex["span2_text"])], separator=" ")
    return {"inputs": _flavour(inputs, use_prefix), "targets": ex["span1_text"],
            "span1_text": ex["span1_text"], "label": ex["label"], "idx": ex["idx"]}

  return _map(fn)


def keep_positive_examples(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Keeps examples with label 1 (WSC training: only true referents are generated)."""
  return dataset.filter(lambda ex: tf.equal(ex["label"], 1))


# ------------------------------------------------------------------------------ ReCoRD


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


def record_passage(passage: tf.Tensor) -> tf.Tensor:
  """T5's '@highlight' joining: after . ? ! \" ' a space, otherwise '. '."""
  passage = tf.strings.regex_replace(passage, r"([.?!\"'])\n@highlight\n", r"\1 ")
  return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def record(use_prefix: bool) -> Preprocessor:
  """ReCoRD: 'record query: Q entities: e1, e2 passage: P' -> first gold answer.

  All gold answers are kept as `answers` (EM / F1 take the max over them).
  """

  def fn(ex):
    view = {"query": ex["query"], "passage": record_passage(ex["passage"]),
            "entities": tf.strings.reduce_join(ex["entities"], separator=", ")}
    fields = [("query", "query"), ("entities", "entities"), ("passage", "passage")]
    return {"inputs": _flavour(join_fields(view, "record", fields), use_prefix),
            "targets": _first_or_unknown(ex["answers"]), "answers": ex["answers"],
            "idx": ex["idx"]}

  return _map(fn)


# ---------------------------------------------------------------------- SQuAD / MRQA


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """T5's SQuAD spacing: a space either side of each ASCII punctuation mark, whitespace
  runs collapsed to one space (not stripped: 'Paris.' -> 'Paris . ')."""
  text = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
  return tf.strings.regex_replace(text, r"\s+", " ")


# Python's `\s` (what the reference MRQA conversion collapses) beyond RE2's [\t\n\f\r ].
_UNICODE_WHITESPACE = r"[\s\x0b\x1c-\x1f\x85\p{Z}]+"


def normalize_whitespace(text: tf.Tensor) -> tf.Tensor:
  """Every run of (Unicode) whitespace -> one space, as the reference MRQA conversion."""
  return tf.strings.regex_replace(text, _UNICODE_WHITESPACE, " ")


def strip_mrqa_markers(text: tf.Tensor) -> tf.Tensor:
  """Replaces MRQA's [PAR] / [TLE] / [DOC] / [SEP] context markers with spaces."""
  text = tf.strings.regex_replace(text, r"\[(PAR|TLE|DOC|SEP)\]", " ")
  return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def _qa_inputs(question: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
  joined = tf.strings.join(["question:", question, "context:", context], separator=" ")
  return tf.strings.regex_replace(joined, r"\s+", " ")


def squad(use_prefix: bool) -> Preprocessor:
  """SQuAD as T5: 'question: Q context: C' -> first gold answer, all punctuation-spaced.

  `answers` keeps every gold answer, spaced the same way (EM / F1 normalise it away).
  """

  def fn(ex):
    answers = pad_punctuation(ex["answers"]["text"])
    inputs = _qa_inputs(pad_punctuation(ex["question"]), pad_punctuation(ex["context"]))
    return {"inputs": _flavour(inputs, use_prefix), "targets": _first_or_unknown(answers),
            "answers": answers}

  return _map(fn)


def mrqa(use_prefix: bool, *, strip_markers: bool = False) -> Preprocessor:
  """MRQA as the reference repository: whitespace-normalised, punctuation-spaced.

  inputs 'question: Q context: C', target the first detected answer (the first gold
  answer if there is none), `answers` the gold answers.

  Args:
    use_prefix: keep the first word ('question:').
    strip_markers: non-default; replace the [PAR] / [TLE] / [DOC] / [SEP] context markers
      with spaces first (the reference keeps them, spaced as '[ PAR ]').
  """

  def prepare(text):
    return pad_punctuation(normalize_whitespace(text))

  def fn(ex):
    context = strip_mrqa_markers(ex["context"]) if strip_markers else ex["context"]
    answers = prepare(ex["answers"])
    detected = prepare(ex["detected_answers"]["text"])
    target = tf.cond(tf.size(detected) > 0, lambda: detected[0],
                     lambda: _first_or_unknown(answers))
    inputs = _qa_inputs(prepare(ex["question"]), prepare(context))
    return {"inputs": _flavour(inputs, use_prefix), "targets": target, "answers": answers}

  return _map(fn)


# --------------------------------------------------------------------------- others


def select_xnli_language(language: str) -> Preprocessor:
  """XNLI: keeps the `premise` / `hypothesis` of one language as plain string features."""

  def fn(ex):
    hyp = ex["hypothesis"]
    # A missing language makes position[0] fail loudly (empty slice), never silently.
    position = tf.where(tf.equal(hyp["language"], language))[:, 0]
    return {"premise": ex["premise"][language],
            "hypothesis": tf.gather(hyp["translation"], position[0]), "label": ex["label"]}

  return _map(fn)


def raw_text_classification(text_key: str, target_key: str) -> Preprocessor:
  """inputs = the text itself, targets = an already verbalized label (SIB-200)."""
  return _map(lambda ex: {"inputs": ex[text_key], "targets": ex[target_key],
                          **_keep(ex, ("index_id",))})
