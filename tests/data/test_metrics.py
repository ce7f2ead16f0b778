"""Metrics and postprocessors against hand-computed values, T5's rules and names.

Every expected value here is worked out by hand in a comment; test_t5_reference.py checks
the same corner cases against the `t5` package itself when it is installed.
"""

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
  out = m.f1_for("yes", "no")(["yes", "yes", "no", "no", "yes"],
                              ["yes", "no", "no", "yes", "yes"])
  assert out == {"f1": pytest.approx(200 / 3)}


@pytest.mark.parametrize("targets, predictions, expected", [
    # An invalid prediction for a negative target is a false positive, not a true negative:
    # TP 1, FP 1 -> F1 = 2/3 (the old rule gave 100).
    (["yes", "no"], ["yes", "maybe"], 200 / 3),
    # ... and for a positive target a false negative: TP 1, FN 1 -> 2/3.
    (["yes", "yes"], ["yes", ""], 200 / 3),
    # Whitespace makes a label invalid (T5 compares exactly): TP 0 -> 0.
    (["yes", "no"], [" yes", "no "], 0.0),
])
def test_binary_f1_counts_invalid_predictions_as_wrong(targets, predictions, expected):
  assert m.f1_for("yes", "no")(targets, predictions)["f1"] == pytest.approx(expected)


def test_mean_class_f1_averages_over_the_declared_labels():
  labels = ("entailment", "contradiction", "neutral")
  targets = ["entailment", "entailment", "contradiction", "neutral"]
  predictions = ["entailment", "contradiction", "contradiction", "garbage"]
  # F1: entailment 2*1/(2+0+1) = 2/3; contradiction 2*1/(2+1+0) = 2/3; neutral 0.
  out = m.mean_class_f1_for(labels)(targets, predictions)
  assert out == {"mean_3class_f1": pytest.approx(100 * (2 / 3 + 2 / 3 + 0) / 3)}


def test_matthews_correlation():
  # TP 1, TN 2, FP 0, FN 1: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3).
  out = m.matthews_corrcoef_for(("0", "1"))(["1", "1", "0", "0"], ["1", "0", "0", "0"])
  assert out == {"matthews_corrcoef": pytest.approx(100 * 2 / math.sqrt(12))}


def test_matthews_correlation_puts_every_invalid_output_in_one_class():
  mcc = m.matthews_corrcoef_for(("0", "1"))
  targets = ["1", "1", "0", "0"]
  # Two different invalid strings: one class 'invalid', as T5's -1. Confusion (rows true
  # 0 / 1, columns 0 / 1 / invalid): [[1, 0, 1], [0, 1, 1]]. Multiclass MCC:
  # c = 2 correct, s = 4, p_k = (1, 1, 2), t_k = (2, 2, 0):
  # (c*s - sum p t) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)) = (8 - 4) / sqrt(10 * 8).
  expected = 100 * 4 / math.sqrt(80)
  assert mcc(targets, ["1", "zzz", "0", "??"])["matthews_corrcoef"] == pytest.approx(expected)
  assert mcc(targets, ["1", "??", "0", "??"])["matthews_corrcoef"] == pytest.approx(expected)


def test_pearson_and_spearman():
  out = m.pearson_spearman([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0])
  # Deviations (-1.5, -.5, .5, 1.5) and (-1.75, -.75, .25, 2.25): 6.5 / sqrt(5 * 8.75).
  assert out["pearson_corrcoef"] == pytest.approx(100 * 6.5 / math.sqrt(5 * 8.75))
  assert out["spearman_corrcoef"] == pytest.approx(100.0)


def test_constant_predictions_correlate_as_nan_unless_asked_for_zero():
  out = m.pearson_spearman([1.0, 2.0], [3.0, 3.0])
  assert set(out) == {"pearson_corrcoef", "spearman_corrcoef"}
  assert all(math.isnan(v) for v in out.values())
  zero = m.pearson_spearman_for("zero")([1.0, 2.0], [3.0, 3.0])
  assert zero == {"pearson_corrcoef": 0.0, "spearman_corrcoef": 0.0}
  with pytest.raises(ValueError, match="constant"):
    m.pearson_spearman_for("one")


def test_stsb_postprocessing_parses_floats():
  assert post.string_to_float(b"3.8") == 3.8
  assert post.string_to_float(" 3.8 ") == 3.8  # float() itself allows spaces, as in T5.
  assert post.string_to_float("four") == -1.0
  assert post.string_to_float("") == -1.0


def test_labels_are_compared_exactly():
  assert post.string_label(b"True") == "True"
  assert post.string_label(" True ") == " True "


def _multirc_example(p, q):
  return {"idx": {"paragraph": p, "question": q, "answer": 0}}


def test_multirc_groups_answers_by_question():
  examples = [_multirc_example(0, 1)] * 2 + [_multirc_example(0, 2)] * 2
  targets = [post.multirc(t, e, True) for t, e in zip(["True", "False", "True", "True"], examples)]
  preds = [post.multirc(p, e) for p, e in zip(["True", "False", "True", "False"], examples)]
  assert targets[0] == {"group": "0-1", "value": 1}
  out = m.multirc_em_f1(targets, preds)
  # Question 0-1 fully right, 0-2 not: EM 1/2. Pooled TP 2, FP 0, FN 1: F1 = 0.8.
  assert out == pytest.approx({"exact_match": 50.0, "f1": 80.0})


def test_multirc_invalid_predictions_are_wrong():
  examples = [_multirc_example(0, 1)] * 2 + [_multirc_example(0, 2)]
  targets = [post.multirc(t, e, True) for t, e in zip(["True", "False", "False"], examples)]
  preds = [post.multirc(p, e) for p, e in zip(["True", "yes", "false"], examples)]
  assert [p["value"] for p in preds] == [1, post.INVALID, post.INVALID]
  out = m.multirc_em_f1(targets, preds)
  # No question fully right: EM 0 (the old rule counted 'false' as a right 'False' and
  # scored question 0-2 right). F1: invalid on False targets -> FP: TP 1, FP 2 -> 1/2.
  assert out == pytest.approx({"exact_match": 0.0, "f1": 50.0})


@pytest.mark.parametrize("text, normalized", [
    ("The  Cat!", "cat"),
    ("a an the", ""),
    ("  A.B.C ", "abc"),
    ("the theatre", "theatre"),   # Articles only as whole words.
    ("Anne's answer", "annes answer"),
    ("An-apple", "anapple"),      # Punctuation goes first, so 'An' is no longer a word.
    ("\tTHE\nend ", "end"),
    ("Paris , France . ", "paris france"),  # T5's punctuation-spaced SQuAD answers.
    ("café – naïve", "café – naïve"),       # Only ASCII punctuation is removed.
])
def test_answer_normalisation(text, normalized):
  assert m.normalize_answer(text) == normalized


def test_token_f1_corner_cases():
  assert m.token_f1("big black cat", "the black cat sat") == pytest.approx(2 / 3)
  assert m.token_f1("cat cat", "cat") == pytest.approx(2 / 3)  # Counts, not sets.
  assert m.token_f1("dog", "cat") == 0.0
  assert m.token_f1("", "cat") == 0.0
  # Both empty after normalisation: SQuAD v1.1 (T5) scores 0, SQuAD v2 scores 1.
  assert m.token_f1("the", "a") == 0.0
  assert m.token_f1("the", "a", empty_f1="v2") == 1.0
  assert m.token_f1("", "cat", empty_f1="v2") == 0.0
  with pytest.raises(ValueError, match="empty_f1"):
    m.token_f1("a", "b", empty_f1="v3")


def test_qa_em_f1_takes_the_max_over_gold_answers():
  out = m.qa_em_f1([["Cat", "dog"], ["the black cat sat", "a big dog"]],
                   ["the cat", "big black cat"])
  # Example 1: EM 1, F1 1. Example 2: EM 0; F1 max(2/3, 'big' vs 'big dog' = 2/3) = 2/3.
  assert out == pytest.approx({"em": 50.0, "f1": 100 * (1 + 2 / 3) / 2})


def test_qa_em_f1_on_empty_answers():
  # An empty prediction against the gold 'The': both normalise to '' -> EM 1, F1 0 (v1.1).
  assert m.qa_em_f1([["The"]], [""]) == {"em": 100.0, "f1": 0.0}
  assert m.qa_em_f1_for("v2")([["The"]], [""]) == {"em": 100.0, "f1": 100.0}
  with pytest.raises(ValueError, match="no gold answers"):
    m.qa_em_f1([[]], ["x"])


def test_qa_answers_postprocessor():
  example = {"answers": [b"Paris", b"in Paris"]}
  assert post.qa_answers(b"x", example, is_target=True) == ["Paris", "in Paris"]
  assert post.qa_answers(b"Paris ", example) == "Paris "


@pytest.mark.parametrize("prediction, t5, lenient", [
    ("the city councilmen", 1, 1), ("Councilmen", 1, 1), ("city councilmen of Paris", 1, 1),
    ("their city", 1, 1),             # Subset after dropping the determiner.
    ("the demonstrators", 0, 0),
    ("", post.INVALID, post.INVALID), ("  ", post.INVALID, post.INVALID),
    ("the", post.INVALID, post.INVALID),  # Only a determiner: empty after cleaning.
    ("councilmen.", 0, 1),            # T5 keeps punctuation: 'councilmen.' is another word.
    ("its councilmen", 0, 1),         # 'its' is no determiner in T5's list.
    ("councilmen's", 0, 0),           # T5: an apostrophe on one side only never matches.
])
def test_wsc_referent_matching(prediction, t5, lenient):
  example = {"span1_text": b"The city councilmen", "label": 1}
  assert post.wsc(prediction, example) == t5
  assert post.wsc_for("lenient")(prediction, example) == lenient
  assert post.wsc("ignored", example, is_target=True) == 1


def test_wsc_apostrophes_on_both_sides_compare_as_words():
  example = {"span1_text": b"Bob's hat", "label": 0}
  assert post.wsc("bob's hat", example) == 1
  assert post.wsc("Bob", example) == 0
  # 'hat' is a subset of {"bob's", 'hat'}, but only the referent has an apostrophe.
  assert post.wsc("hat", example) == 0


def test_wsc_accuracy_rewards_a_rejected_wrong_candidate_but_never_an_empty_answer():
  examples = [{"span1_text": b"Mark", "label": 1}, {"span1_text": b"Mark", "label": 0},
              {"span1_text": b"Mark", "label": 0}]
  targets = [post.wsc("", ex, is_target=True) for ex in examples]
  predictions = [post.wsc(p, ex) for p, ex in zip(["Mark", "Pete", ""], examples)]
  assert (targets, predictions) == ([1, 0, 0], [1, 0, post.INVALID])
  # The empty prediction used to be 'no match' and so right for a label-0 example.
  assert m.accuracy(targets, predictions)["accuracy"] == pytest.approx(200 / 3)


def test_unknown_wsc_rule_is_refused():
  with pytest.raises(ValueError, match="referent rule"):
    post.wsc_for("fuzzy")
