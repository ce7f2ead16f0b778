"""Metrics: `fn(targets, predictions) -> {name: value}`, values in percent as T5 reports.

Statistics come from scikit-learn / scipy; what is written here is the task logic around
them (answer normalisation, MultiRC grouping, label-space handling). Predictions outside
the label set (free generation) simply count as wrong.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.stats
from sklearn import metrics as skm

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
  if not targets:
    raise ValueError("No examples to score.")


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  _check_lengths(targets, predictions)
  return {"accuracy": 100 * skm.accuracy_score(list(targets), list(predictions))}


def f1_for(positive: Any) -> MetricFn:
  """Binary F1 of the class `positive` (e.g. 'equivalent' for MRPC)."""

  def f1(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    y_true = [t == positive for t in targets]
    y_pred = [p == positive for p in predictions]
    return {"f1": 100 * skm.f1_score(y_true, y_pred, zero_division=0.0)}

  return f1


def macro_f1_for(labels: Sequence[Any]) -> MetricFn:
  """Unweighted mean of the per-class F1 over `labels` (CB's 'F1', SIB-200 / XNLI macro-F1)."""

  def macro_f1(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    score = skm.f1_score(list(targets), list(predictions), labels=list(labels),
                         average="macro", zero_division=0.0)
    return {"macro_f1": 100 * score}

  return macro_f1


def matthews_corr(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  _check_lengths(targets, predictions)
  return {"matthews_corr": 100 * skm.matthews_corrcoef(list(targets), list(predictions))}


def pearson_spearman(targets: Sequence[float], predictions: Sequence[float]
                     ) -> dict[str, float]:
  """Pearson and Spearman correlation (STS-B); NaN-free: a constant input scores 0."""
  _check_lengths(targets, predictions)
  t, p = np.asarray(targets, float), np.asarray(predictions, float)
  if np.ptp(t) == 0 or np.ptp(p) == 0:
    return {"pearson": 0.0, "spearman": 0.0}
  return {"pearson": 100 * scipy.stats.pearsonr(t, p)[0],
          "spearman": 100 * scipy.stats.spearmanr(t, p)[0]}


def multirc_em_f1a(targets: Sequence[Mapping[str, Any]],
                   predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC: exact match per question (all its answer options right) and F1a.

  Items are {'group': question id, 'value': bool} (see postprocessors.multirc). F1a is the
  binary F1 over all answer options pooled; EM averages over questions.
  """
  _check_lengths(targets, predictions)
  by_group: dict[str, list[bool]] = collections.defaultdict(list)
  for t, p in zip(targets, predictions):
    if t["group"] != p["group"]:
      raise ValueError(f"Target group {t['group']} paired with prediction group {p['group']}.")
    by_group[t["group"]].append(t["value"] == p["value"])
  em = np.mean([all(v) for v in by_group.values()])
  f1a = skm.f1_score([t["value"] for t in targets], [p["value"] for p in predictions],
                     zero_division=0.0)
  return {"exact_match": 100 * em, "f1a": 100 * f1a}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """Lowercase, drop punctuation and the articles a / an / the, collapse whitespace."""
  text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
  """Bag-of-tokens F1 of two answers after normalisation (both empty: 1, one empty: 0)."""
  pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
  if not pred or not ref:
    return float(pred == ref)
  common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred), common / len(ref)
  return 2 * precision * recall / (precision + recall)


def qa_em_f1(targets: Sequence[Sequence[str]], predictions: Sequence[str]
             ) -> dict[str, float]:
  """SQuAD / ReCoRD / MRQA: EM and token F1, each the max over the gold answers."""
  _check_lengths(targets, predictions)
  em, f1 = [], []
  for golds, pred in zip(targets, predictions):
    if isinstance(golds, str):
      golds = [golds]
    if not golds:
      raise ValueError("An example has no gold answers (unlabeled split?).")
    em.append(max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds))
    f1.append(max(token_f1(pred, g) for g in golds))
  return {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}
