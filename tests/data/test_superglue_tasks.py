"""SuperGLUE tasks through their preprocessors on mocked TFDS data (real feature specs)."""

import pytest
import tensorflow_datasets as tfds

from prompt_jax import data as data_lib
from prompt_jax.data import superglue
from tests.data.data_helpers import mock_examples, run_task, texts

WSC_TEXT = "Mark told Pete many lies about himself , which Pete included in his book ."

# task -> (TFDS split, task split, hand-written example, T5 inputs, target)
CASES = {
    "boolq": ("validation", "validation",
              {"question": "is it wet", "passage": "It rains.", "label": 1, "idx": 0},
              "boolq passage: It rains. question: is it wet", "True"),
    "cb": ("train", "train", {"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
           "cb hypothesis: H. premise: P.", "neutral"),
    "copa": ("validation", "validation",
             {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.",
              "question": "cause", "label": 0, "idx": 0},
             "copa choice1: He slipped. choice2: He sang. premise: The man fell. "
             "question: cause", "choice1"),
    "multirc": ("validation", "validation",
                {"paragraph": "<b>Sent 1: </b>Ann ran.<br>", "question": "Who ran?",
                 "answer": "Ann", "idx": {"paragraph": 0, "question": 1, "answer": 2},
                 "label": 1},
                "multirc answer: Ann paragraph: Sent 1: Ann ran. question: Who ran?", "True"),
    "record": ("validation", "validation",
               {"passage": "Ann met Bob.\n@highlight\nThey talked", "query": "@placeholder met Bob",
                "entities": ["Ann", "Bob"], "answers": ["Ann", "Ann."],
                "idx": {"passage": 0, "query": 0}},
               "record query: @placeholder met Bob entities: Ann, Bob passage: Ann met Bob. - "
               "They talked", "Ann"),
    "rte": ("train", "train", {"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 0},
            "rte hypothesis: H. premise: P.", "entailment"),
    "wic": ("validation", "validation",
            {"word": "bank", "sentence1": "A bank.", "sentence2": "The bank.", "start1": 2,
             "start2": 4, "end1": 6, "end2": 8, "idx": 0, "label": 0},
            "wic sentence1: A bank. sentence2: The bank. word: bank", "False"),
    "wsc": ("validation", "validation",
            {"text": WSC_TEXT, "span1_index": 0, "span1_text": "Mark", "span2_index": 12,
             "span2_text": "his", "label": 0, "idx": 0},
            "wsc text: Mark told Pete many lies about himself , which Pete included in *his* "
            "book .", "Mark"),
    "axb": ("test", "test", {"sentence1": "S1.", "sentence2": "S2.", "label": 1, "idx": 0},
            "rte hypothesis: S2. premise: S1.", "not_entailment"),
    "axg": ("test", "test", {"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 0},
            "rte hypothesis: H. premise: P.", "entailment"),
}


def test_every_super_glue_task_has_a_case():
  assert set(CASES) == set(superglue.SUPER_GLUE_TASKS)


@pytest.mark.parametrize("task", sorted(CASES))
def test_super_glue_formats_with_and_without_prefix(prepared, task):
  tfds_split, split, example, inputs, target = CASES[task]
  with mock_examples({tfds_split: [example]}):
    with_prefix = run_task(f"super_glue_{task}", split)
    without = run_task(f"super_glue_{task}_noprefix", split)
  assert texts(with_prefix) == [(inputs, target)]
  assert texts(without) == [(inputs.split(" ", 1)[1], target)]
  assert with_prefix[0]["targets"][-1] == 1


def test_wsc_training_keeps_only_true_referents(prepared):
  negative = dict(CASES["wsc"][2])
  positive = dict(negative, span1_text="Pete", span1_index=2, label=1, idx=1)
  with mock_examples({"train": [negative, positive], "validation": [negative, positive]}):
    train = run_task("super_glue_wsc", "train")
    validation = run_task("super_glue_wsc", "validation")
  assert [t for _, t in texts(train)] == ["Pete"]
  assert [t for _, t in texts(validation)] == ["Mark", "Pete"]


def test_wsc_marks_multi_word_pronoun_spans(prepared):
  example = {"text": "I saw the dog and it barked .", "span1_index": 2, "span1_text": "the dog",
             "span2_index": 4, "span2_text": "and it", "label": 1, "idx": 0}
  with mock_examples({"validation": [example]}):
    out = run_task("super_glue_wsc_noprefix", "validation")
  assert texts(out) == [("text: I saw the dog *and it* barked .", "the dog")]


def test_record_training_has_one_example_per_answer(prepared):
  example = CASES["record"][2]
  with mock_examples({"train": [example], "validation": [example]}):
    train = run_task("super_glue_record_noprefix", "train")
    validation = run_task("super_glue_record_noprefix", "validation")
  assert [t for _, t in texts(train)] == ["Ann", "Ann."]
  assert len(validation) == 1
  assert [a.decode() for a in validation[0]["answers"]] == ["Ann", "Ann."]


def test_label_names_match_tfds_class_labels():
  for task in superglue.SUPER_GLUE_KV_TASKS.values():
    builder = tfds.builder(task.tfds_name.split(":")[0])
    assert tuple(builder.info.features["label"].names) == task.labels, task.name
  assert data_lib.task_labels("super_glue_multirc") == ("False", "True")
  assert data_lib.task_labels("super_glue_wsc") is None  # Generation only.
  assert data_lib.task_labels("super_glue_cb_noprefix") == superglue.CB_LABELS
