"""Metrics and postprocessors against hand-computed values."""

import math

import pytest

from prompt_jax.data import metrics as m
from prompt_jax.data import postprocessors as post


def test_accuracy_counts_out_of_label_predictions_as_wrong():
  assert m.accuracy(["a", "b", "c", "a"], ["a", "b", "x", "b"]) == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="2 targets but 1"):
    m.accuracy(["a", "b"], ["a"])


def test_binary_f1_of_the_positive_class():
  # TP 2, FP 1, FN 1 -> P = R = 2/3 -> F1 = 2/3.
  out = m.f1_for("yes")(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
  assert out["f1"] == pytest.approx(200 / 3)
  # An invalid generation is simply not the positive class.
  assert m.f1_for("yes")(["yes", "no"], ["yes", "maybe"])["f1"] == pytest.approx(100.0)


def test_macro_f1_averages_over_the_declared_labels():
  labels = ("entailment", "contradiction", "neutral")
  targets = ["entailment", "entailment", "contradiction", "neutral"]
  predictions = ["entailment", "contradiction", "contradiction", "garbage"]
  # F1: entailment 2*1/(2+0+1) = 2/3; contradiction 2*1/(2+1+0) = 2/3; neutral 0.
  assert m.macro_f1_for(labels)(targets, predictions)["macro_f1"] == pytest.approx(
      100 * (2 / 3 + 2 / 3 + 0) / 3)


def test_matthews_correlation():
  # TP 1, TN 2, FP 0, FN 1: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3).
  out = m.matthews_corr(["1", "1", "0", "0"], ["1", "0", "0", "0"])
  assert out["matthews_corr"] == pytest.approx(100 * 2 / math.sqrt(12))


def test_pearson_and_spearman():
  out = m.pearson_spearman([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0])
  # Deviations (-1.5, -.5, .5, 1.5) and (-1.75, -.75, .25, 2.25): 6.5 / sqrt(5 * 8.75).
  assert out["pearson"] == pytest.approx(100 * 6.5 / math.sqrt(5 * 8.75))
  assert out["spearman"] == pytest.approx(100.0)
  assert m.pearson_spearman([1.0, 2.0], [3.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_stsb_postprocessing_parses_floats():
  assert post.string_to_float(b"3.8") == 3.8
  assert post.string_to_float("four") == -1.0


def test_multirc_groups_answers_by_question():
  ex = lambda p, q: {"idx": {"paragraph": p, "question": q, "answer": 0}}
  examples = [ex(0, 1), ex(0, 1), ex(0, 2), ex(0, 2)]
  targets = [post.multirc(t, e, True) for t, e in zip(["True", "False", "True", "True"], examples)]
  preds = [post.multirc(p, e) for p, e in zip(["True", "False", "True", "False"], examples)]
  assert targets[0] == {"group": "0-1", "value": True}
  out = m.multirc_em_f1a(targets, preds)
  # Question 0-1 fully right, 0-2 not: EM 1/2. Pooled TP 2, FP 0, FN 1: F1a = 0.8.
  assert out == pytest.approx({"exact_match": 50.0, "f1a": 80.0})


@pytest.mark.parametrize("text, normalized", [
    ("The  Cat!", "cat"),
    ("a an the", ""),
    ("  A.B.C ", "abc"),
    ("the theatre", "theatre"),   # Articles only as whole words.
    ("Anne's answer", "annes answer"),
    ("An-apple", "anapple"),      # Punctuation goes first, so 'An' is no longer a word.
    ("\tTHE\nend ", "end"),
])
def test_answer_normalisation(text, normalized):
  assert m.normalize_answer(text) == normalized


def test_token_f1_corner_cases():
  assert m.token_f1("big black cat", "the black cat sat") == pytest.approx(2 / 3)
  assert m.token_f1("the", "a") == 1.0       # Both empty after normalisation.
  assert m.token_f1("", "cat") == 0.0
  assert m.token_f1("cat cat", "cat") == pytest.approx(2 / 3)  # Counts, not sets.
  assert m.token_f1("dog", "cat") == 0.0


def test_qa_em_f1_takes_the_max_over_gold_answers():
  out = m.qa_em_f1([["Cat", "dog"], ["the black cat sat", "a big dog"]],
                   ["the cat", "big black cat"])
  # Example 1: EM 1, F1 1. Example 2: EM 0; F1 max(2/3, 'big' vs 'big dog' = 2/3) = 2/3.
  assert out["exact_match"] == pytest.approx(50.0)
  assert out["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_qa_answers_postprocessor():
  example = {"answers": [b"Paris", b"in Paris"]}
  assert post.qa_answers(b"x", example, is_target=True) == ["Paris", "in Paris"]
  assert post.qa_answers(b"Paris ", example) == "Paris "


@pytest.mark.parametrize("prediction, matches", [
    ("the city councilmen", True), ("Councilmen", True), ("the demonstrators", False),
    ("", False), ("city councilmen of Paris", True), ("their city", True),
])
def test_wsc_referent_matching(prediction, matches):
  example = {"span1_text": b"The city councilmen", "label": 1}
  assert post.wsc(prediction, example) is matches
  assert post.wsc("ignored", example, is_target=True) is True
