"""SuperGLUE tasks through their preprocessors on mocked TFDS data (real feature specs).

The expected strings are T5's, as the `t5` package (0.9.4) writes them for these records
(test_t5_reference.py recomputes them with it when it is installed); the no-prefix
flavour is T5's string minus its first word.
"""

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
    # T5's order (question, answer, paragraph); '<br>' -> ' ', bold tags deleted even where
    # they touch a word, from the question too; whitespace is left as it is.
    "multirc": ("validation", "validation",
                {"paragraph": "<b>Sent 1: </b>Ann ran.<br><b>Sent 2: </b>Bob <b>x</b>y   z.<br>",
                 "question": "Who <b>ran</b>?", "answer": "Ann",
                 "idx": {"paragraph": 0, "question": 1, "answer": 2}, "label": 1},
                "multirc question: Who ran? answer: Ann paragraph: Sent 1: Ann ran. Sent 2: Bob "
                "xy   z. ", "True"),
    # '@highlight' lines: after . ? ! " ' joined with a space, otherwise with '. '.
    "record": ("validation", "validation",
               {"passage": "Ann met Bob.\n@highlight\nThey talked\n@highlight\nIt \"rained\""
                           "\n@highlight\nEnd", "query": "@placeholder met Bob",
                "entities": ["Ann", "Bob"], "answers": ["Ann", "Ann."],
                "idx": {"passage": 0, "query": 0}},
               "record query: @placeholder met Bob entities: Ann, Bob passage: Ann met Bob. They "
               "talked. It \"rained\" End", "Ann"),
    "rte": ("train", "train", {"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 0},
            "rte hypothesis: H. premise: P.", "entailment"),
    "wic": ("validation", "validation",
            {"word": "bank", "sentence1": "A bank.", "sentence2": "The bank.", "start1": 2,
             "start2": 4, "end1": 6, "end2": 8, "idx": 0, "label": 0},
            "wic sentence1: A bank. sentence2: The bank. word: bank", "False"),
    "wsc": ("validation", "validation",
            {"text": WSC_TEXT, "span1_index": 0, "span1_text": "Mark", "span2_index": 12,
             "span2_text": "his", "label": 0, "idx": 0},
            "wsc: Mark told Pete many lies about himself , which Pete included in *his* book .",
            "Mark"),
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


def test_wsc_special_cases_the_texts_whose_pronoun_index_is_wrong(prepared):
  # In wsc.fixed, span2_index of this text points past the pronoun ('him,"' is one word);
  # T5 writes the text re-spaced with the pronoun marked, whatever the index says.
  text = ("The boy continued to whip the pony , and eventually the pony threw him over. John "
          "laughed out quite loud. \"Good for him,\" he said. ")
  example = {"text": text, "span1_index": 1, "span1_text": "The boy", "span2_index": 22,
             "span2_text": "him", "label": 1, "idx": 0}
  other = dict(example, text="Ann told Bea she won .", span2_index=3, span2_text="she", idx=1)
  with mock_examples({"validation": [example, other]}):
    out = run_task("super_glue_wsc_noprefix", "validation")
  assert texts(out) == [
      ("The boy continued to whip the pony , and eventually the pony threw him over. John "
       "laughed out quite loud. \"Good for *him* ,\" he said.", "The boy"),
      ("Ann told Bea *she* won .", "The boy")]


def test_wsc_marks_as_t5_at_the_edges(prepared):
  # Pronoun as last word: T5's 'left X right' join leaves a trailing space; a literal
  # word 'X' elsewhere in the text is marked too (T5 marks every ' X ').
  example = {"text": "Pete saw X and Mark saw him", "span1_index": 0, "span1_text": "Pete",
             "span2_index": 6, "span2_text": "him", "label": 0, "idx": 0}
  with mock_examples({"validation": [example]}):
    out = run_task("super_glue_wsc", "validation")
  assert texts(out) == [("wsc: Pete saw *him* and Mark saw *him* ", "Pete")]


def test_record_training_has_one_example_per_answer(prepared):
  example = CASES["record"][2]
  with mock_examples({"train": [example], "validation": [example]}):
    train = run_task("super_glue_record_noprefix", "train")
    validation = run_task("super_glue_record_noprefix", "validation")
  assert [t for _, t in texts(train)] == ["Ann", "Ann."]
  assert {i for i, _ in texts(train)} == {texts(validation)[0][0]}
  assert len(validation) == 1
  assert [a.decode() for a in validation[0]["answers"]] == ["Ann", "Ann."]


def test_label_names_match_tfds_class_labels():
  for task in superglue.SUPER_GLUE_KV_TASKS.values():
    builder = tfds.builder(task.tfds_name.split(":")[0])
    assert tuple(builder.info.features["label"].names) == task.labels, task.name
  assert data_lib.task_labels("super_glue_multirc") == ("False", "True")
  assert data_lib.task_labels("super_glue_wsc") is None  # Generation only.
  assert data_lib.task_labels("super_glue_cb_noprefix") == superglue.CB_LABELS


# Corner cases, T5's strings as the t5 package writes them (test_t5_reference.py shares
# the records): task -> (TFDS split = task split, record, T5 inputs, target).
EDGE_CASES = {
    # Only <br> and <b> are markup to T5: '<i>' stays; '<br>' anywhere (the answer too)
    # becomes a space, and the spaces are not collapsed.
    "multirc": ("validation",
                {"paragraph": "<b>Sent 1: </b>It's <i>x</i>.<br> <b>Sent 2:</b> y<br><br>",
                 "question": "<b>What</b> is it?", "answer": "x<br>y",
                 "idx": {"paragraph": 3, "question": 9, "answer": 27}, "label": 0},
                "multirc question: What is it? answer: x y paragraph: Sent 1: It's <i>x</i>.  "
                "Sent 2: y  ", "False"),
    # Every '@highlight' joining rule; an unanswered (test) query targets '<unk>'.
    "record": ("test",
               {"passage": "A.\n@highlight\nB?\n@highlight\nC!\n@highlight\nD'\n@highlight\nE",
                "query": "Q @placeholder", "entities": ["A"], "answers": [],
                "idx": {"passage": 1, "query": 2}},
               "record query: Q @placeholder entities: A passage: A. B? C! D' E", "<unk>"),
    # The second wsc.fixed text T5 special-cases: span2_index points at 'use', not 'it'.
    "wsc": ("validation",
            {"text": "When they had eventually calmed down a bit , and had gotten home, Mr. Farley "
                     "put the magic pebble in an iron safe . Some day they might want to use it "
                     ", but really for now, what more could they wish for?",
             "span1_index": 0, "span1_text": "the magic pebble", "span2_index": 31,
             "span2_text": "it", "label": 1, "idx": 3},
            "wsc: When they had eventually calmed down a bit , and had gotten home, Mr. Farley "
            "put the magic pebble in an iron safe . Some day they might want to use *it* , but "
            "really for now, what more could they wish for?", "the magic pebble"),
    # Field text is used as it is: tabs and newlines stay, unlabeled -> '<unk>'.
    "boolq": ("test", {"question": "is it", "passage": "Yes\tno\n", "label": -1, "idx": 2},
              "boolq passage: Yes\tno\n question: is it", "<unk>"),
}


@pytest.mark.parametrize("task", sorted(EDGE_CASES))
def test_super_glue_edge_cases_are_written_as_t5(prepared, task):
  split, example, inputs, target = EDGE_CASES[task]
  with mock_examples({split: [example]}):
    with_prefix = run_task(f"super_glue_{task}", split)
    without = run_task(f"super_glue_{task}_noprefix", split)
  assert texts(with_prefix) == [(inputs, target)]
  assert texts(without) == [(inputs.split(" ", 1)[1], target)]
