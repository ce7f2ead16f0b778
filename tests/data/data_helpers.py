"""Helpers for the data tests: TFDS mocks serving hand-written examples, task runners."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_jax import data as data_lib


def _signature(spec: Any, example: Any, path: str) -> Any:
  """The real TFDS tensor spec restricted to the keys a hand-written example provides."""
  if isinstance(spec, Mapping):
    unknown = set(example) - set(spec)
    assert not unknown, f"{path}: {sorted(unknown)} are not features of the real dataset"
    return {k: _signature(spec[k], example[k], f"{path}/{k}") for k in example}
  return spec


@contextlib.contextmanager
def mock_examples(by_split: Mapping[str, Sequence[Mapping[str, Any]]]) -> Iterator[None]:
  """Serves hand-written examples per TFDS split, typed by the real dataset's features."""

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del decoders, read_config, kwargs
    examples = list(by_split[str(split)])
    spec = _signature(self.info.features.get_tensor_spec(), examples[0], self.name)
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    yield


def run_task(name: str, split: str) -> list[dict[str, Any]]:
  """All examples of a registered task's split, in order, as numpy values."""
  task = data_lib.get_mixture_or_task(name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def texts(examples: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
  """(inputs, targets) strings of preprocessed examples."""
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in examples]
