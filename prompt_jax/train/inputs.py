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

Length bucketing (`LengthBuckets`, on by default): the converter pads every example to
`task_feature_lengths`, so a batch of short sentences would pay for the full length. Each
batch is instead cut to the smallest bucket length (powers of two, up to the feature length)
that holds its longest example, separately for the encoder and the decoder features; the
step compiles once per bucket. Only trailing padding is cut, so the loss is that of the
full-length batch (to float32 rounding), and the cut depends only on the batch's contents,
so a resumed run sees the same shapes; in a multi-host run every process holds the same
global batch, so all cut it alike.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

Batch = dict[str, np.ndarray]
FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights", "task_ids")
ENCODER_FEATURES = ("encoder_input_tokens",)
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


@dataclasses.dataclass(frozen=True)
class LengthBuckets:
  """Pad each batch to the smallest bucket length that fits, not to the feature length.

  Attributes:
    enabled: False pads every batch to `task_feature_lengths` (one compiled shape).
    min_length: the shortest bucket; buckets are min_length, 2 min_length, 4 min_length,
      ... below the feature length, then the feature length itself.
  """
  enabled: bool = True
  min_length: int = 16

  def __post_init__(self):
    if self.min_length < 1:
      raise ValueError(f"LengthBuckets.min_length must be >= 1, got {self.min_length}.")

  def lengths(self, max_length: int) -> tuple[int, ...]:
    """The bucket lengths for a feature padded to `max_length` (ascending, last = max)."""
    if not self.enabled:
      return (max_length,)
    out, n = [], self.min_length
    while n < max_length:
      out.append(n)
      n *= 2
    return tuple(out) + (max_length,)

  def bucket(self, needed: int, max_length: int) -> int:
    """The smallest bucket >= needed (max_length when needed exceeds every bucket)."""
    return next((b for b in self.lengths(max_length) if b >= needed), max_length)


FIXED_SHAPES = LengthBuckets(enabled=False)


def _used_length(tokens: np.ndarray) -> int:
  """Length up to the last non-padding (non-zero) token of any row of [B, L]."""
  nonzero = np.asarray(tokens).reshape(tokens.shape[0], -1) != 0
  if not nonzero.any():
    return 1
  return int(nonzero.shape[1] - np.argmax(nonzero[:, ::-1].any(axis=0)))


def bucket_batch(batch: Mapping[str, np.ndarray], buckets: LengthBuckets) -> Batch:
  """Cuts a full-length batch's trailing padding down to its bucket lengths.

  The encoder length follows `encoder_input_tokens`, the decoder length
  `decoder_target_tokens` (the inputs start with the start id 0, so they cannot tell).
  """
  out = {k: np.asarray(v) for k, v in batch.items()}
  if not buckets.enabled:
    return out
  enc_max, dec_max = (out["encoder_input_tokens"].shape[1],
                      out["decoder_target_tokens"].shape[1])
  enc_used = _used_length(out["encoder_input_tokens"])
  dec_used = _used_length(out["decoder_target_tokens"])
  enc_len, dec_len = buckets.bucket(enc_used, enc_max), buckets.bucket(dec_used, dec_max)
  for name in ENCODER_FEATURES:
    out[name] = out[name][:, :enc_len]
  for name in DECODER_FEATURES:
    out[name] = out[name][:, :dec_len]
  return out


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
                  drop_remainder: bool = True,
                  buckets: LengthBuckets = LengthBuckets()) -> Iterator[Batch]:
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
    buckets: length bucketing (default on); `FIXED_SHAPES` pads to the feature lengths.
  """
  ds = mixed_dataset(mixture_or_task_name, split=split,
                     task_feature_lengths=task_feature_lengths, seed=seed, shuffle=shuffle,
                     repeat=repeat)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if start:
    ds = ds.skip(start)
  for batch in ds.as_numpy_iterator():
    yield bucket_batch({k: batch[k] for k in FEATURES}, buckets)


def batch_factory(mixture_or_task_name: str, **kwargs):
  """A `start -> iterator` factory for `trainer.train` (training: shuffled, repeated)."""
  return lambda start: seqio_batches(mixture_or_task_name, start=start, **kwargs)
