"""Metrics: `fn(targets, predictions) -> {name: value}`, in percent, with T5's rules.

Names and rules are those of `t5.evaluation.metrics` (README, "Comparability"):

* a prediction outside the label set (free generation) is always wrong: accuracy never
  matches it, binary F1 counts it as the opposite of the target (T5's
  `f1_score_with_invalid`), Matthews correlation sees every invalid output as one extra
  class, and mean-per-class F1 averages over the declared labels only;
* SQuAD / ReCoRD / MRQA answers are normalised as the official SQuAD v1.1 script does,
  and token F1 is 0 whenever no token is shared (so also when both sides normalise to
  empty, v1.1's rule; SQuAD v2's 'both empty -> 1' is the non-default `empty_f1='v2'`).

Statistics come from scikit-learn / scipy; what is written here is the task logic around
them.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.stats
from sklearn import metrics as skm

from prompt_jax.data.postprocessors import INVALID

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
  if not targets:
    raise ValueError("No examples to score.")


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """{'accuracy'}: share of predictions equal to their target."""
  _check_lengths(targets, predictions)
  return {"accuracy": 100 * skm.accuracy_score(list(targets), list(predictions))}


def _flip_invalid(targets: Sequence[Any], predictions: Sequence[Any],
                  labels: Sequence[Any]) -> list[Any]:
  """Predictions with each one outside the two `labels` replaced by the other label than
  its target (wrong by construction, as T5's `f1_score_with_invalid`)."""
  neg, pos = labels
  return [p if p in labels else (neg if t == pos else pos)
          for t, p in zip(targets, predictions)]


def f1_for(positive: Any, negative: Any) -> MetricFn:
  """{'f1'}: binary F1 of the class `positive`; invalid predictions are always wrong."""

  def f1(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    fixed = _flip_invalid(targets, predictions, (negative, positive))
    y_true = [t == positive for t in targets]
    y_pred = [p == positive for p in fixed]
    return {"f1": 100 * skm.f1_score(y_true, y_pred, zero_division=0.0)}

  return f1


def mean_class_f1_for(labels: Sequence[Any]) -> MetricFn:
  """{'mean_<C>class_f1'}: unweighted mean of the per-class F1 over the C `labels`.

  T5's `mean_multiclass_f1` (CB's 'F1'; also XNLI / SIB-200 macro-F1). A prediction
  outside `labels` is a false negative of its target's class and no class's positive.
  """
  name = f"mean_{len(labels)}class_f1"

  def mean_class_f1(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    score = skm.f1_score(list(targets), list(predictions), labels=list(labels),
                         average="macro", zero_division=0.0)
    return {name: 100 * score}

  return mean_class_f1


def matthews_corrcoef_for(labels: Sequence[Any]) -> MetricFn:
  """{'matthews_corrcoef'}: MCC with every prediction outside `labels` as one class.

  T5 maps each invalid output to class -1 before sklearn's MCC; doing the same keeps
  two different invalid strings from counting as two classes.
  """
  labels = list(labels)

  def matthews_corrcoef(targets: Sequence[Any], predictions: Sequence[Any]
                        ) -> dict[str, float]:
    _check_lengths(targets, predictions)
    y_true = [labels.index(t) if t in labels else INVALID for t in targets]
    y_pred = [labels.index(p) if p in labels else INVALID for p in predictions]
    return {"matthews_corrcoef": 100 * skm.matthews_corrcoef(y_true, y_pred)}

  return matthews_corrcoef


def pearson_spearman_for(constant: str = "nan") -> MetricFn:
  """{'pearson_corrcoef', 'spearman_corrcoef'} (STS-B).

  Args:
    constant: what a constant target or prediction list scores: 'nan' (default, what
      T5's scipy call gives) or 'zero' (non-default, keeps NaN out of model selection).
  """
  if constant not in ("nan", "zero"):
    raise ValueError(f"constant must be 'nan' or 'zero', not {constant!r}.")

  def pearson_spearman(targets: Sequence[float], predictions: Sequence[float]
                       ) -> dict[str, float]:
    _check_lengths(targets, predictions)
    t, p = np.asarray(targets, float), np.asarray(predictions, float)
    if np.ptp(t) == 0 or np.ptp(p) == 0:
      value = float("nan") if constant == "nan" else 0.0
      return {"pearson_corrcoef": value, "spearman_corrcoef": value}
    return {"pearson_corrcoef": 100 * float(scipy.stats.pearsonr(t, p)[0]),
            "spearman_corrcoef": 100 * float(scipy.stats.spearmanr(t, p)[0])}

  return pearson_spearman


pearson_spearman = pearson_spearman_for("nan")


def multirc_em_f1(targets: Sequence[Mapping[str, Any]],
                  predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC: {'exact_match', 'f1'}, T5's names (SuperGLUE calls them EM and F1a).

  Items are {'group': question id, 'value': 1 / 0 / INVALID} (postprocessors.multirc).
  EM: share of questions whose answer options are all right. F1: binary F1 of 'True'
  over all answer options pooled, an invalid value counting as wrong.
  """
  _check_lengths(targets, predictions)
  by_group: dict[str, list[bool]] = collections.defaultdict(list)
  for t, p in zip(targets, predictions):
    if t["group"] != p["group"]:
      raise ValueError(f"Target group {t['group']} paired with prediction group {p['group']}.")
    by_group[t["group"]].append(t["value"] == p["value"])
  em = np.mean([all(v) for v in by_group.values()])
  f1 = f1_for(1, 0)([t["value"] for t in targets], [p["value"] for p in predictions])["f1"]
  return {"exact_match": 100 * float(em), "f1": f1}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
EMPTY_F1_RULES = ("v1.1", "v2")


def normalize_answer(text: str) -> str:
  """SQuAD v1.1's normalisation: lowercase, drop ASCII punctuation, then the articles
  a / an / the, collapse whitespace."""
  text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def token_f1(prediction: str, gold: str, *, empty_f1: str = "v1.1") -> float:
  """Bag-of-tokens F1 of two answers after normalisation.

  Args:
    prediction: predicted answer.
    gold: one gold answer.
    empty_f1: 'v1.1' (default, T5 and the SQuAD v1.1 script): no shared token -> 0, even
      when both sides are empty; 'v2' (non-default, SQuAD v2's script): an empty side
      scores 1 if both are empty, else 0.
  """
  if empty_f1 not in EMPTY_F1_RULES:
    raise ValueError(f"empty_f1 must be one of {EMPTY_F1_RULES}, not {empty_f1!r}.")
  pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
  if empty_f1 == "v2" and (not pred or not ref):
    return float(pred == ref)
  common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred), common / len(ref)
  return 2 * precision * recall / (precision + recall)


def qa_em_f1_for(empty_f1: str = "v1.1") -> MetricFn:
  """{'em', 'f1'} (T5's SQuAD names): each the max over an example's gold answers."""

  def qa_em_f1(targets: Sequence[Sequence[str]], predictions: Sequence[str]
               ) -> dict[str, float]:
    _check_lengths(targets, predictions)
    em, f1 = [], []
    for golds, pred in zip(targets, predictions):
      if isinstance(golds, str):
        golds = [golds]
      if not golds:
        raise ValueError("An example has no gold answers (unlabeled split?).")
      em.append(max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds))
      f1.append(max(token_f1(pred, g, empty_f1=empty_f1) for g in golds))
    return {"em": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}

  return qa_em_f1


qa_em_f1 = qa_em_f1_for("v1.1")
