"""Each initializer's rows are what it claims."""

import jax
import numpy as np
import pytest

from prompt_jax.prompts import initializers

KEY = jax.random.PRNGKey(0)
TABLE = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)  # [V, D]


def _is_row_of(rows, table):
  return [int(np.flatnonzero((table == r).all(axis=1))[0]) if (table == r).all(axis=1).any()
          else -1 for r in np.asarray(rows)]


def test_uniform_ranges():
  paper = np.asarray(initializers.random_uniform()(KEY, (200, 6)))
  ref = np.asarray(initializers.reference_uniform()(KEY, (200, 6)))
  assert paper.min() >= -0.5 and paper.max() <= 0.5 and paper.min() < -0.4
  assert ref.min() >= 0.0 and ref.max() < 0.5 and ref.max() > 0.4


def test_sampled_vocab_rows_are_distinct_rows_of_the_population():
  rows = initializers.sampled_vocab(TABLE, population=20)(KEY, (10, 6))
  idx = _is_row_of(rows, TABLE)
  assert all(0 <= i < 20 for i in idx) and len(set(idx)) == 10
  with pytest.raises(ValueError, match="distinct"):
    initializers.sampled_vocab(TABLE, population=5)(KEY, (6, 6))


def test_class_labels_means_then_sampled_vocab():
  labels = [[3, 4], [7]]
  out = np.asarray(initializers.class_labels(TABLE, labels,
                                             initializers.sampled_vocab(TABLE, 10))(KEY, (5, 6)))
  np.testing.assert_allclose(out[0], TABLE[[3, 4]].mean(0), rtol=1e-6)
  np.testing.assert_allclose(out[1], TABLE[7], rtol=1e-6)
  assert all(0 <= i < 10 for i in _is_row_of(out[2:], TABLE))
  with pytest.raises(ValueError, match="prompt length"):
    initializers.class_labels(TABLE, [[1], [2], [3]])(KEY, (2, 6))


def test_from_string():
  out = np.asarray(initializers.from_string(TABLE, [9, 8])(KEY, (4, 6)))
  np.testing.assert_array_equal(out[:2], TABLE[[9, 8]])
  assert all(i >= 0 for i in _is_row_of(out[2:], TABLE))


def test_from_npy_roundtrip_and_shape_error(tmp_path):
  prompt = np.arange(12, dtype=np.float32).reshape(3, 4)
  np.save(tmp_path / "p.npy", prompt)
  np.testing.assert_array_equal(initializers.from_npy(tmp_path / "p.npy")(KEY, (3, 4)), prompt)
  with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 4\)"):
    initializers.from_npy(tmp_path / "p.npy")(KEY, (5, 4))


def test_from_npy_refuses_pickled_object_arrays(tmp_path):
  np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match="pickle"):
    initializers.from_npy(tmp_path / "obj.npy")
