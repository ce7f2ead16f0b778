"""GLUE tasks through their preprocessors on mocked TFDS data (real feature specs).

The expected strings are T5's (test_t5_reference.py recomputes them with the `t5` package
when it is installed); the no-prefix flavour is T5's string minus its first word.
"""

import pytest
import tensorflow_datasets as tfds

from tests.data.data_helpers import mock_examples, run_task, texts
from prompt_jax import data as data_lib
from prompt_jax.data import glue

# task -> (TFDS split to serve, task split, hand-written example, T5 inputs, target)
CASES = {
    "cola": ("validation", "validation", {"sentence": "Books were read.", "label": 1, "idx": 0},
             "cola sentence: Books were read.", "acceptable"),
    "sst2": ("train", "train", {"sentence": "a dull film", "label": 0, "idx": 3},
             "sst2 sentence: a dull film", "negative"),
    "mrpc": ("validation", "validation",
             {"sentence1": "He left.", "sentence2": "He went away.", "label": 1, "idx": 0},
             "mrpc sentence1: He left. sentence2: He went away.", "equivalent"),
    "qqp": ("train", "train",
            {"question1": "Why?", "question2": "How come?", "label": 0, "idx": 0},
            "qqp question1: Why? question2: How come?", "not_duplicate"),
    "mnli": ("validation_matched", "validation",
             {"premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": 0,
              "idx": 0},
             "mnli hypothesis: An animal rests. premise: A cat sleeps.", "entailment"),
    "mnli_mismatched": ("validation_mismatched", "validation",
                        {"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
                        "mnli hypothesis: H. premise: P.", "contradiction"),
    "qnli": ("train", "train",
             {"question": "Who?", "sentence": "Ann did.", "label": 0, "idx": 0},
             "qnli question: Who? sentence: Ann did.", "entailment"),
    "rte": ("validation", "validation",
            {"sentence1": "It rains.", "sentence2": "It is dry.", "label": 1, "idx": 0},
            "rte sentence1: It rains. sentence2: It is dry.", "not_entailment"),
    "wnli": ("train", "train",
             {"sentence1": "A.", "sentence2": "B.", "label": 1, "idx": 0},
             "wnli sentence1: A. sentence2: B.", "entailment"),
    "ax": ("test", "test",
           {"premise": "P.", "hypothesis": "H.", "label": -1, "idx": 0},
           "mnli hypothesis: H. premise: P.", "<unk>"),
}


def test_every_glue_task_has_a_case():
  assert set(CASES) | {"stsb"} == set(glue.GLUE_TASKS)


@pytest.mark.parametrize("task", sorted(CASES))
def test_glue_formats_with_and_without_prefix(prepared, task):
  tfds_split, split, example, inputs, target = CASES[task]
  with mock_examples({tfds_split: [example]}):
    with_prefix = run_task(f"glue_{task}", split)
    without = run_task(f"glue_{task}_noprefix", split)
  assert texts(with_prefix) == [(inputs, target)]
  word, rest = inputs.split(" ", 1)
  assert word == glue.GLUE_TASKS[task].prefix
  assert texts(without) == [(rest, target)]
  # Tokenised with the T5 vocabulary, EOS (id 1) appended once.
  vocabulary = data_lib.get_vocabulary("t5")
  ex = with_prefix[0]
  assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
  assert vocabulary.decode(ex["inputs"][:-1].tolist()) == inputs
  if target != "<unk>":  # '<unk>' is not a piece; T5 writes it all the same.
    assert vocabulary.decode(ex["targets"][:-1].tolist()) == target


def test_stsb_targets_are_rounded_to_a_fifth(prepared):
  examples = [{"sentence1": "A.", "sentence2": "B.", "label": score, "idx": i}
              for i, score in enumerate([3.86, 4.95, 0.0, 1.05, 2.5])]
  with mock_examples({"validation": examples}):
    out = run_task("glue_stsb", "validation")
    bare = run_task("glue_stsb_noprefix", "validation")
  # 2.5 * 5 = 12.5 rounds half to even (tf.round, as T5): '2.4'.
  assert [t for _, t in texts(out)] == ["3.8", "5.0", "0.0", "1.0", "2.4"]
  assert texts(out)[0][0] == "stsb sentence1: A. sentence2: B."
  assert texts(bare)[0] == ("sentence1: A. sentence2: B.", "3.8")


def test_label_names_match_tfds_class_labels():
  for task in glue.GLUE_TASKS.values():
    if task.labels is None:
      continue
    builder = tfds.builder(task.tfds_name.split(":")[0])
    assert tuple(builder.info.features["label"].names) == task.labels, task.name
    assert data_lib.task_labels(f"glue_{task.name}") == task.labels


EDGE_CASES = [  # (task, TFDS split = task split, record, T5 inputs, target)
    # Text is used as it is (no stripping or collapsing); unlabeled -> '<unk>'.
    ("cola", "test", {"sentence": "  Spaced   out , \"quoted\" ", "label": -1, "idx": 7},
     "cola sentence:   Spaced   out , \"quoted\" ", "<unk>"),
    ("mrpc", "validation",
     {"sentence1": "Él dijo: «sí».", "sentence2": "", "label": 0, "idx": 1},
     "mrpc sentence1: Él dijo: «sí». sentence2: ", "not_equivalent"),
]


@pytest.mark.parametrize("task, split, example, inputs, target", EDGE_CASES)
def test_glue_edge_cases_are_written_as_t5(prepared, task, split, example, inputs, target):
  with mock_examples({split: [example]}):
    with_prefix = run_task(f"glue_{task}", split)
    without = run_task(f"glue_{task}_noprefix", split)
  assert texts(with_prefix) == [(inputs, target)]
  assert texts(without) == [(inputs.split(" ", 1)[1], target)]
