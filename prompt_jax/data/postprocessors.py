"""Postprocessors: decoded strings -> values the metrics compare.

Each follows SeqIO's signature `fn(output, example=None, is_target=False)`: `output` is a
decoded prediction or target string, `example` the preprocessed example it belongs to
(features as numpy values / bytes).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

Example = Mapping[str, Any] | None


def as_text(value: Any) -> str:
  """bytes / numpy bytes / str -> str."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  return str(value)


def string_label(output: Any, example: Example = None, is_target: bool = False) -> str:
  """A label name, surrounding whitespace removed."""
  del example, is_target
  return as_text(output).strip()


def string_to_float(output: Any, example: Example = None, is_target: bool = False,
                    default: float = -1.0) -> float:
  """A number ('3.8'); unparsable predictions become `default` (-1, as T5 does)."""
  del example, is_target
  try:
    return float(as_text(output).strip())
  except ValueError:
    return default


def multirc(output: Any, example: Example = None, is_target: bool = False) -> dict[str, Any]:
  """MultiRC answer-option label with its question group: {'group', 'value'}."""
  del is_target
  idx = example["idx"]
  group = f"{int(idx['paragraph'])}-{int(idx['question'])}"
  return {"group": group, "value": as_text(output).strip() == "True"}


def qa_answers(output: Any, example: Example = None, is_target: bool = False
               ) -> str | list[str]:
  """QA: targets become the list of gold answers, predictions stay a string."""
  if is_target:
    return [as_text(a) for a in np.atleast_1d(example["answers"])]
  return as_text(output)


_WORD = re.compile(r"\w+")
_WSC_IGNORED = frozenset({"a", "an", "the", "his", "her", "their", "its", "my", "our", "your"})


def _content_words(text: str) -> set[str]:
  return {w for w in _WORD.findall(text.lower()) if w not in _WSC_IGNORED}


def referent_matches(prediction: str, referent: str) -> bool:
  """Whether a generated referent names the candidate.

  Case, punctuation, articles and possessive determiners are ignored; the prediction
  matches when its content words equal the candidate's, or when one set contains the other
  (so 'the city councilmen' matches 'councilmen' and vice versa). Empty never matches.
  """
  pred, ref = _content_words(prediction), _content_words(referent)
  if not pred or not ref:
    return False
  return pred <= ref or ref <= pred


def wsc(output: Any, example: Example = None, is_target: bool = False) -> bool:
  """WSC referent generation -> bool: targets the gold label, predictions a match test."""
  if is_target:
    return bool(int(example["label"]) == 1)
  return referent_matches(as_text(output), as_text(example["span1_text"]))
