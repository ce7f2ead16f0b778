"""Postprocessors: decoded strings -> values the metrics compare, with T5's rules.

Each follows SeqIO's signature `fn(output, example=None, is_target=False)`: `output` is a
decoded prediction or target string, `example` the preprocessed example it belongs to
(features as numpy values / bytes). As in T5, a prediction outside a task's label set is
kept (label strings) or mapped to `INVALID` (class ids), a value no target ever has, so
every metric counts it as wrong; labels are compared exactly, whitespace included.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

Example = Mapping[str, Any] | None
Postprocessor = Callable[..., Any]
INVALID = -1  # The class id of a prediction that is no label (T5's `default=-1`).
BOOL_LABELS = ("False", "True")


def as_text(value: Any) -> str:
  """bytes / numpy bytes / str -> str."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  return str(value)


def string_label(output: Any, example: Example = None, is_target: bool = False) -> str:
  """A label name exactly as decoded (T5 compares label strings without stripping)."""
  del example, is_target
  return as_text(output)


def string_to_float(output: Any, example: Example = None, is_target: bool = False,
                    default: float = -1.0) -> float:
  """A number ('3.8'); unparsable predictions become `default` (-1, as T5 does)."""
  del example, is_target
  try:
    return float(as_text(output))
  except ValueError:
    return default


def class_id(text: str, labels: tuple[str, ...] = BOOL_LABELS) -> int:
  """Index of `text` in `labels`, or INVALID."""
  return labels.index(text) if text in labels else INVALID


def multirc(output: Any, example: Example = None, is_target: bool = False) -> dict[str, Any]:
  """MultiRC answer option -> {'group': question id, 'value': 1 / 0 / INVALID}."""
  del is_target
  idx = example["idx"]
  group = f"{int(idx['paragraph'])}-{int(idx['question'])}"
  return {"group": group, "value": class_id(as_text(output))}


def qa_answers(output: Any, example: Example = None, is_target: bool = False
               ) -> str | list[str]:
  """QA: targets become the list of gold answers, predictions stay a string."""
  if is_target:
    return [as_text(a) for a in np.atleast_1d(example["answers"])]
  return as_text(output)


# ------------------------------------------------------------------------------ WSC

# Words T5's WSC rule ignores in a referent (determiners and possessives).
WSC_DETERMINERS = frozenset({
    "a", "an", "each", "every", "few", "her", "his", "many", "much", "my", "our", "some",
    "that", "the", "their", "these", "this", "those", "which", "whose", "your"})
REFERENT_RULES = ("t5", "lenient")


def _t5_words(text: str) -> list[str]:
  words = text.strip().lower().split(" ")
  return [w for w in words if w not in WSC_DETERMINERS]


def t5_referent_match(prediction: str, referent: str) -> int:
  """T5's rule: 1 if a prediction names the referent, 0 if not, INVALID if it is empty.

  Both sides are lowercased, stripped, split on single spaces and cleared of
  determiners; punctuation stays. They match when one word set contains the other,
  unless exactly one of them has an apostrophe ('Bob' does not name "Bob's hat").
  """
  pred_words = _t5_words(prediction)
  if not " ".join(pred_words):
    return INVALID  # Never equal to a label, so an empty prediction is always wrong.
  ref_words = _t5_words(referent)
  pred_text, ref_text = " ".join(pred_words), " ".join(ref_words)
  if ("'" in pred_text) != ("'" in ref_text):
    return 0
  pred, ref = set(pred_text.split(" ")), set(ref_text.split(" "))
  return int(pred <= ref or ref <= pred)


def lenient_referent_match(prediction: str, referent: str) -> int:
  """Non-default rule: like T5's, but punctuation-blind and tolerant of extra spaces.

  Words are runs of letters / digits ('Councilmen.' names 'councilmen'); determiners
  and 'its' are ignored; no apostrophe rule ('Bob's' reads as 'bob s', which contains
  'bob'). An empty prediction is INVALID, as in T5.
  """
  def words(text: str) -> set[str]:
    found = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return {w for w in found if w not in WSC_DETERMINERS | {"its"}}

  pred, ref = words(prediction), words(referent)
  if not pred:
    return INVALID
  return int(bool(ref) and (pred <= ref or ref <= pred))


def wsc_for(rule: str = "t5") -> Postprocessor:
  """WSC referent generation: targets -> the gold label (1 / 0), predictions -> match.

  Accuracy then compares the two: a prediction that names the candidate is right when
  the candidate is the referent, one that does not is right when it is not, and an empty
  one is always wrong.

  Args:
    rule: 't5' (default, T5's `wsc_simple` rule) or 'lenient' (`lenient_referent_match`).
  """
  if rule not in REFERENT_RULES:
    raise ValueError(f"Unknown WSC referent rule {rule!r}; use one of {REFERENT_RULES}.")
  match = t5_referent_match if rule == "t5" else lenient_referent_match

  def wsc(output: Any, example: Example = None, is_target: bool = False) -> int:
    if is_target:
      return int(example["label"])
    return match(as_text(output), as_text(example["span1_text"]))

  wsc.__name__ = f"wsc_{rule}"
  return wsc


wsc = wsc_for("t5")
