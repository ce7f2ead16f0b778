"""SeqIO tasks -> deterministic, resumable numpy batches for the training loop.

`EncDecFeatureConverter(pack=False)` produces `encoder_input_tokens`, `decoder_input_tokens`,
`decoder_target_tokens` and `decoder_loss_weights`. Each process reads its own shard
(`seqio.ShardInfo`) and yields its slice of every global batch. Resuming skips exactly the
number of batches already consumed, so a restarted run sees the same batches in the same order.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import jax
import numpy as np
import seqio

Batch = dict[str, np.ndarray]
FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights")


def per_process_batch_size(global_batch_size: int) -> int:
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f"BATCH_SIZE={global_batch_size} must be divisible by the number of "
                     f"processes ({n}).")
  return global_batch_size // n


def seqio_batches(mixture_or_task_name: str, *, split: str,
                  task_feature_lengths: Mapping[str, int], batch_size: int, seed: int = 0,
                  shuffle: bool = True, repeat: bool = True, start: int = 0,
                  drop_remainder: bool = True) -> Iterator[Batch]:
  """Batches of a task or mixture, skipping the first `start` batches.

  Args:
    mixture_or_task_name: a registered SeqIO task or mixture.
    split: dataset split ("train", "validation", ...).
    task_feature_lengths: {"inputs": L, "targets": T}.
    batch_size: the *global* batch size; each process yields its share.
    seed: shuffle seed (deterministic order).
    shuffle / repeat: training uses both; evaluation neither.
    start: number of batches already consumed (resume position).
    drop_remainder: keep static shapes (training); evaluation may keep the last batch.
  """
  ds = seqio.get_dataset(
      mixture_or_task_name, task_feature_lengths=dict(task_feature_lengths),
      dataset_split=split, shuffle=shuffle, num_epochs=None if repeat else 1, seed=seed,
      shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()),
      feature_converter=seqio.EncDecFeatureConverter(pack=False), use_cached=False)
  ds = ds.batch(per_process_batch_size(batch_size), drop_remainder=drop_remainder)
  if start:
    ds = ds.skip(start)
  for batch in ds.as_numpy_iterator():
    yield {k: np.asarray(batch[k]) for k in FEATURES}


def batch_factory(mixture_or_task_name: str, **kwargs):
  """A `start -> iterator` factory for `trainer.train` (training: shuffled, repeated)."""
  return lambda start: seqio_batches(mixture_or_task_name, start=start, **kwargs)
