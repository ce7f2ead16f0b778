"""SeqIO tasks -> deterministic, resumable numpy batches for the training loop.

`EncDecFeatureConverter(pack=False)` produces `encoder_input_tokens`, `decoder_input_tokens`,
`decoder_target_tokens` and `decoder_loss_weights`; every example also carries `task_ids`, the
index of its task in `task_names(name)` (a mixture's task names, sorted; 0 for a single
task), so per-task prompt modules see which task each row of a mixed batch belongs to. Every
process runs the same deterministic pipeline and yields the whole *global* batch; the
trainer places on each device only its rows (`builder.global_array`), so the data a step
sees never depends on how many processes there are or how the mesh spans them.
Resuming skips exactly the number of batches already consumed, so a restarted run sees the
same batches in the same order.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

Batch = dict[str, np.ndarray]
FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights", "task_ids")


def task_names(mixture_or_task_name: str) -> list[str]:
  """The task-id order: a mixture's task names sorted (leaf tasks), or the task itself."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  if isinstance(provider, seqio.Mixture):
    return sorted(t.name for t in provider.tasks)
  return [provider.name]


def _with_task_id(ds: tf.data.Dataset, task_id: int) -> tf.data.Dataset:
  return ds.map(lambda ex: {**ex, "task_ids": tf.constant(task_id, tf.int32)},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def mixed_dataset(mixture_or_task_name: str, *, split: str,
                  task_feature_lengths: Mapping[str, int], seed: int = 0,
                  shuffle: bool = True, repeat: bool = True) -> tf.data.Dataset:
  """Converted (unpacked) examples with `task_ids`, sampled at the mixture's rates.

  The same as `seqio.get_dataset` on the mixture (tasks without `split` are skipped, each
  task shuffled with `seed`, `sample_from_datasets` at the mixture's rates with `seed`),
  except that each example keeps the index of its task.
  """
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  names = task_names(mixture_or_task_name)
  if isinstance(provider, seqio.Mixture):
    members = [(names.index(t.name), t) for t in provider.tasks if split in t.splits
               and provider.get_rate(t) > 0]
    if not members:
      raise ValueError(f"No task of mixture {mixture_or_task_name!r} has a {split!r} split.")
  else:
    members = [(0, provider)]
  datasets = []
  for task_id, task in members:
    ds = seqio.get_dataset(
        task.name, task_feature_lengths=dict(task_feature_lengths), dataset_split=split,
        shuffle=shuffle, num_epochs=None if repeat else 1, seed=seed,
        # One shard: every process reads the global stream (see the module docstring).
        shard_info=seqio.ShardInfo(0, 1),
        feature_converter=seqio.EncDecFeatureConverter(pack=False), use_cached=False)
    datasets.append(_with_task_id(ds, task_id))
  if len(datasets) == 1:
    return datasets[0]
  rates = [float(provider.get_rate(task)) for _, task in members]
  return tf.data.Dataset.sample_from_datasets(datasets, rates, seed=seed)


def seqio_batches(mixture_or_task_name: str, *, split: str,
                  task_feature_lengths: Mapping[str, int], batch_size: int, seed: int = 0,
                  shuffle: bool = True, repeat: bool = True, start: int = 0,
                  drop_remainder: bool = True) -> Iterator[Batch]:
  """Batches of a task or mixture, skipping the first `start` batches.

  Args:
    mixture_or_task_name: a registered SeqIO task or mixture.
    split: dataset split ("train", "validation", ...).
    task_feature_lengths: {"inputs": L, "targets": T}.
    batch_size: the *global* batch size (every process yields whole global batches).
    seed: shuffle seed (deterministic order).
    shuffle / repeat: training uses both; evaluation neither.
    start: number of batches already consumed (resume position).
    drop_remainder: keep static shapes (training); evaluation may keep the last batch.
  """
  ds = mixed_dataset(mixture_or_task_name, split=split,
                     task_feature_lengths=task_feature_lengths, seed=seed, shuffle=shuffle,
                     repeat=repeat)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if start:
    ds = ds.skip(start)
  for batch in ds.as_numpy_iterator():
    yield {k: np.asarray(batch[k]) for k in FEATURES}


def batch_factory(mixture_or_task_name: str, **kwargs):
  """A `start -> iterator` factory for `trainer.train` (training: shuffled, repeated)."""
  return lambda start: seqio_batches(mixture_or_task_name, start=start, **kwargs)
