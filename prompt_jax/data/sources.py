"""Data sources: TFDS datasets checked up front, with derived and re-split splits.

`TfdsSource` is a SeqIO `DataSource` over one TFDS dataset that

* checks `tfds.builder(...).is_prepared()` before reading and raises `DataNotPreparedError`
  naming the dataset and the `prompt-jax prepare` command, instead of letting TFDS start a
  download (SeqIO's own TFDS source loads with `download=True`);
* maps each task split to a TFDS split plus an optional transform (WSC keeps only the
  positive training examples, ReCoRD expands one training example per answer);
* re-splits a TFDS split into two disjoint parts by a seeded permutation of example ids
  (`Resplit`), which is how the DePT suite carves validation / test sets. Membership is
  decided by the id (`idx`) of each example, never by read order, so file shuffling and
  sharding do not change which part an example belongs to.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants as tfds_constants

Transform = Callable[[tf.data.Dataset], tf.data.Dataset]

# A user-set default TFDS data dir (`set_tfds_data_dir`); None defers to SeqIO / TFDS.
_data_dir_setting: str | None = None
# (tfds_name, data_dir) pairs already found prepared in this process.
_prepared_cache: set[tuple[str, str]] = set()


class DataNotPreparedError(RuntimeError):
  """A TFDS dataset a task needs is not prepared in the TFDS data dir."""

  def __init__(self, dataset: str, task: str, data_dir: str):
    self.dataset = dataset
    self.task = task
    self.data_dir = data_dir
    self.command = prepare_command(task, data_dir)
    super().__init__(
        f"TFDS dataset '{dataset}' (needed by '{task}') is not prepared in {data_dir}. "
        f"Prepare it once on a machine with network access, then rerun:\n  {self.command}")


def prepare_command(name: str, data_dir: str) -> str:
  """The CLI command that prepares every TFDS dataset `name` needs into `data_dir`."""
  return f"prompt-jax prepare {name} --tfds_data_dir={data_dir}"


def set_tfds_data_dir(data_dir: str | None) -> None:
  """Sets the TFDS data dir used by every task (also SeqIO's override); None resets."""
  global _data_dir_setting
  _data_dir_setting = data_dir
  seqio.set_tfds_data_dir_override(data_dir)


def resolve_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else the configured one, else SeqIO's override, else TFDS' default."""
  seqio_override = seqio.utils._TFDS_DATA_DIR_OVERRIDE  # pylint: disable=protected-access
  return (data_dir or _data_dir_setting or seqio_override
          or tfds_constants.get_default_data_dir())


def dataset_is_prepared(tfds_name: str, data_dir: str) -> bool:
  """Whether `tfds_name` (e.g. 'glue/rte:2.0.0') is prepared in `data_dir` (no download)."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # TFDS warns about every folder it does not find.
  try:
    return tfds.builder(tfds_name, data_dir=data_dir).is_prepared()
  finally:
    absl_logger.setLevel(level)


def ensure_prepared(tfds_names: Sequence[str], task: str, data_dir: str | None = None) -> str:
  """Raises DataNotPreparedError for the first of `tfds_names` not prepared; returns the dir."""
  data_dir = resolve_data_dir(data_dir)
  for name in tfds_names:
    if (name, data_dir) in _prepared_cache:
      continue
    if not dataset_is_prepared(name, data_dir):
      raise DataNotPreparedError(name, task, data_dir)
    _prepared_cache.add((name, data_dir))
  return data_dir


def get_feature(example: Mapping[str, Any], path: str) -> tf.Tensor:
  """Feature at a '/'-separated path, e.g. 'idx/paragraph'."""
  value = example
  for part in path.split("/"):
    value = value[part]
  return value


@dataclasses.dataclass(frozen=True)
class Resplit:
  """Splits the ids of one TFDS split into two disjoint parts by a seeded permutation.

  Attributes:
    tfds_split: the TFDS split that is divided.
    first_size: number of ids in part 0; None takes ceil(N / 2) (halving).
    seed: seed of the permutation; the same seed always gives the same parts.
    key: feature path of the id; examples sharing an id stay in one part (MultiRC uses
      'idx/paragraph' so a question's answers are never split).
    dense_ids: the ids are exactly 0..N-1 (true of TFDS GLUE / SuperGLUE `idx`), so N from
      the dataset info suffices; otherwise the split is scanned once for its ids.
  """
  tfds_split: str
  first_size: int | None
  seed: int
  key: str = "idx"
  dense_ids: bool = True

  def assign(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique sorted `ids` and the part (0 or 1) of each."""
    ids = np.unique(ids)
    n_first = math.ceil(len(ids) / 2) if self.first_size is None else self.first_size
    if n_first > len(ids):
      raise ValueError(f"Cannot hold out {n_first} ids from a split with {len(ids)}.")
    order = np.random.default_rng(self.seed).permutation(len(ids))
    parts = np.ones(len(ids), np.int64)
    parts[order[:n_first]] = 0
    return ids, parts


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """How a task split is read: a TFDS split, maybe one part of a Resplit, then a transform."""
  tfds_split: str
  transform: Transform | None = None
  resplit: Resplit | None = None
  part: int = 0


def _as_spec(value: str | SplitSpec) -> SplitSpec:
  return SplitSpec(value) if isinstance(value, str) else value


class TfdsSource(seqio.DataSource):
  """A TFDS-backed SeqIO source that refuses, fast and clearly, to read unprepared data.

  Args:
    tfds_name: TFDS name with config and version, e.g. 'super_glue/wsc.fixed:1.0.2'.
    splits: task split -> TFDS split name or SplitSpec.
    task_name: the registered name used in the prepare command of error messages.
    data_dir: a fixed TFDS data dir; None resolves it when data is read.
  """

  def __init__(self, tfds_name: str, splits: Mapping[str, str | SplitSpec], *,
               task_name: str, data_dir: str | None = None):
    self.tfds_name = tfds_name
    self.task_name = task_name
    self._data_dir = data_dir
    self._split_specs = {k: _as_spec(v) for k, v in splits.items()}
    self._loaders: dict[str, seqio.TfdsDataSource] = {}
    self._assignments: dict[tuple[str, Resplit], tf.lookup.StaticHashTable] = {}
    super().__init__(splits=tuple(splits))

  def __repr__(self):
    return f"TfdsSource({self.tfds_name!r}, splits={list(self._split_specs)})"

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def split_spec(self, split: str) -> SplitSpec:
    if split not in self._split_specs:
      raise ValueError(f"Task '{self.task_name}' has no split {split!r}; it has "
                       f"{list(self._split_specs)}.")
    return self._split_specs[split]

  def _loader(self) -> seqio.TfdsDataSource:
    data_dir = ensure_prepared([self.tfds_name], self.task_name, self._data_dir)
    if data_dir not in self._loaders:
      tfds_splits = sorted({s.tfds_split for s in self._split_specs.values()})
      self._loaders[data_dir] = seqio.TfdsDataSource(
          self.tfds_name, tfds_data_dir=data_dir, splits=tfds_splits, read_only=True)
    return self._loaders[data_dir]

  def list_shards(self, split: str) -> Sequence[str]:
    return self._loader().list_shards(self.split_spec(split).tfds_split)

  def num_input_examples(self, split: str) -> int | None:
    """Examples in `split` before preprocessing (transforms not counted); None if unknown."""
    spec = self.split_spec(split)
    try:
      n = self._loader().num_input_examples(spec.tfds_split)
    except (KeyError, ValueError):
      return None
    if not n:
      return None
    if spec.resplit is None:
      return n
    if not spec.resplit.dense_ids:
      return None
    first = math.ceil(n / 2) if spec.resplit.first_size is None else spec.resplit.first_size
    return first if spec.part == 0 else n - first

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # Unused, as in SeqIO's sources.
    spec = self.split_spec(split)
    loader = self._loader()
    ds = loader.get_dataset(spec.tfds_split, shuffle=shuffle, seed=seed, shard_info=shard_info)
    if spec.resplit is not None:
      ds = self._select_part(ds, spec)
    if spec.transform is not None:
      ds = spec.transform(ds)
    return ds

  def _ids(self, resplit: Resplit) -> np.ndarray:
    loader = self._loader()
    n = None
    if resplit.dense_ids:
      try:
        n = loader.num_input_examples(resplit.tfds_split)
      except (KeyError, ValueError):
        n = None
    if n:
      return np.arange(n, dtype=np.int64)
    ds = loader.get_dataset(resplit.tfds_split, shuffle=False)
    ds = ds.map(lambda ex: tf.cast(get_feature(ex, resplit.key), tf.int64))
    return np.fromiter(ds.as_numpy_iterator(), dtype=np.int64)

  def _select_part(self, ds: tf.data.Dataset, spec: SplitSpec) -> tf.data.Dataset:
    resplit = spec.resplit
    cache_key = (resolve_data_dir(self._data_dir), resplit)
    if cache_key not in self._assignments:
      ids, parts = resplit.assign(self._ids(resplit))
      self._assignments[cache_key] = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.int64),
                                              tf.constant(parts, tf.int64)), default_value=-1)
    table = self._assignments[cache_key]

    def in_part(ex):
      part = table.lookup(tf.cast(get_feature(ex, resplit.key), tf.int64))
      check = tf.debugging.assert_non_negative(
          part, message=f"{self.tfds_name}: example id outside the re-split universe")
      with tf.control_dependencies([check]):
        return tf.equal(part, spec.part)

    return ds.filter(in_part)


def tfds_source_factory(tfds_name: str, splits: Mapping[str, str | SplitSpec]
                        ) -> Callable[[str], TfdsSource]:
  """A `make_source(task_name)` callable for the registry."""
  splits = dict(splits)
  return lambda task_name: TfdsSource(tfds_name, splits, task_name=task_name)
