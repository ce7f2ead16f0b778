"""SuperGLUE-8 / DePT suites: mixtures and DePT's disjoint, seeded re-splits."""

import numpy as np
import pytest
import tensorflow as tf

from prompt_jax import data as data_lib
from prompt_jax.data import suites
from prompt_jax.data.sources import Resplit
from tests.data.data_helpers import mock_examples, run_task, texts


def _rte(n, offset=0):
  return [{"sentence1": f"s{i}.", "sentence2": "h.", "label": i % 2, "idx": i}
          for i in range(offset, offset + n)]


def _ids(examples):
  return [int(ex["idx"]) for ex in examples]


def _source_ids(name, split):
  """Ids of a task split as its source yields them (no text preprocessing, no tokens)."""
  source = data_lib.get_mixture_or_task(name).source
  return _ids(source.get_dataset(split, shuffle=False).as_numpy_iterator())


def test_resplit_assign_is_a_seeded_disjoint_partition():
  ids = np.arange(11) * 3
  out_ids, parts = Resplit("validation", None, seed=1).assign(ids[::-1])
  np.testing.assert_array_equal(out_ids, ids)
  assert parts.sum() == 5  # ceil(11 / 2) = 6 ids in part 0.
  again = Resplit("validation", None, seed=1).assign(ids)[1]
  other = Resplit("validation", None, seed=2).assign(ids)[1]
  np.testing.assert_array_equal(parts, again)
  assert not np.array_equal(parts, other)
  assert Resplit("train", 4, seed=0).assign(ids)[1].tolist().count(0) == 4
  with pytest.raises(ValueError, match="Cannot hold out"):
    Resplit("train", 12, seed=0).assign(ids)


def test_dept_small_task_halves_validation_deterministically(prepared):
  with mock_examples({"train": _rte(3, 100), "validation": _rte(10)}):
    train = _source_ids("dept_rte_noprefix", "train")
    validation = run_task("dept_rte_noprefix", "validation")
    test = _source_ids("dept_rte_noprefix", "test")
    validation_again = _source_ids("dept_rte_noprefix", "validation")
  assert train == [100, 101, 102]
  assert len(validation) == 5 and len(test) == 5
  assert sorted(_ids(validation) + test) == list(range(10))
  assert _ids(validation) == validation_again
  assert texts(validation)[0][0].startswith("sentence1: s")


def test_dept_split_depends_on_the_seed(prepared):
  data_lib.suites.register_dept_suite(seed=7)
  with mock_examples({"validation": _rte(20)}):
    seed42 = _source_ids("dept_rte", "validation")
    seed7 = _source_ids("dept_rte_seed7", "validation")
  assert len(seed42) == len(seed7) == 10
  assert seed42 != seed7


def test_dept_large_task_holds_out_1000_training_examples(prepared):
  train = [{"question1": f"q{i}?", "question2": "p?", "label": i % 2, "idx": i}
           for i in range(1010)]
  validation = [dict(ex, idx=i) for i, ex in enumerate(train[:3])]
  with mock_examples({"train": train, "validation": validation}):
    new_train = _source_ids("dept_qqp", "train")
    new_validation = _source_ids("dept_qqp", "validation")
    test = run_task("dept_qqp", "test")
  assert len(new_train) == 10 and len(new_validation) == suites.DEPT_HOLDOUT_SIZE == 1000
  assert sorted(new_train + new_validation) == list(range(1010))
  assert _ids(test) == [0, 1, 2]  # The original validation split.
  assert texts(test)[0] == ("qqp question1: q0? question2: p?", "not_duplicate")


def test_dept_multirc_halves_by_paragraph(prepared):
  examples = [{"paragraph": f"Para {p}.", "question": f"Q{q}?", "answer": f"A{a}",
               "idx": {"paragraph": p, "question": 10 * p + q, "answer": a}, "label": a % 2}
              for p in range(4) for q in range(2) for a in range(2)]
  with mock_examples({"validation": examples}):
    validation = run_task("dept_multirc", "validation")
    test = run_task("dept_multirc", "test")
  paragraphs = lambda exs: {int(ex["idx"]["paragraph"]) for ex in exs}
  assert len(validation) == len(test) == 8
  assert paragraphs(validation).isdisjoint(paragraphs(test))
  assert paragraphs(validation) | paragraphs(test) == {0, 1, 2, 3}


def test_dept_mnli_uses_mismatched_for_validation_and_matched_for_test(prepared):
  ex = lambda tag: [{"premise": tag, "hypothesis": "h", "label": 0, "idx": 0}]
  with mock_examples({"validation_mismatched": ex("mm"), "validation_matched": ex("m")}):
    validation = run_task("dept_mnli_noprefix", "validation")
    test = run_task("dept_mnli_noprefix", "test")
  assert texts(validation)[0][0] == "hypothesis: h premise: mm"
  assert texts(test)[0][0] == "hypothesis: h premise: m"


def test_dept_wsc_is_classification(prepared):
  example = {"text": "Ann thanked Bea because she helped .", "span1_index": 2,
             "span1_text": "Bea", "span2_index": 4, "span2_text": "she", "label": 1, "idx": 0}
  with mock_examples({"train": [example]}):
    out = run_task("dept_wsc", "train")
  assert texts(out) == [("wsc span1_text: Bea span2_text: she text: Ann thanked Bea because "
                         "she helped .", "True")]
  assert data_lib.task_labels("dept_wsc") == ("False", "True")


def test_suite_mixtures_hold_their_tasks():
  sg8 = data_lib.get_mixture_or_task("super_glue_8_noprefix")
  assert sorted(t.name for t in sg8.tasks) == sorted(
      f"super_glue_{t}_noprefix" for t in suites.SUPER_GLUE_8)
  dept = data_lib.get_mixture_or_task("dept13")
  assert len(dept.tasks) == 13 == len(suites.DEPT_TASKS)
  assert len(set(data_lib.tfds_datasets_for("dept13"))) == 13


class _FakeLoader:
  """Stands in for the TFDS loader: a split of `n_info` examples by its info, `ids` in data."""

  def __init__(self, n_info, ids):
    self.n_info, self.ids = n_info, ids

  def num_input_examples(self, split):
    return self.n_info

  def get_dataset(self, split, shuffle=False, seed=None, shard_info=None):
    return tf.data.Dataset.from_tensor_slices({"idx": tf.constant(self.ids, tf.int32)})


def test_dense_ids_come_from_the_split_size_and_strays_fail_loudly():
  source = data_lib.get_mixture_or_task("dept_cb").source
  fake = _FakeLoader(6, [5, 4, 3, 2, 1, 0])
  source = type(source)(source.tfds_name, {"validation": source.split_spec("validation"),
                                           "test": source.split_spec("test")},
                        task_name="probe")
  source._loader = lambda: fake
  validation = _ids(source.get_dataset("validation").as_numpy_iterator())
  test = _ids(source.get_dataset("test").as_numpy_iterator())
  assert sorted(validation + test) == list(range(6)) and len(validation) == 3
  fake.ids = [0, 1, 9]  # 9 is outside the 6 ids the dataset info announces.
  source._assignments.clear()
  with pytest.raises(tf.errors.InvalidArgumentError, match="outside the re-split universe"):
    list(source.get_dataset("validation").as_numpy_iterator())
