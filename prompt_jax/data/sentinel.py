"""The "span corruption + sentinel" target form (Lester et al. 2021, section 5 ablation).

A span-corruption T5 was only ever asked to produce targets that start with a sentinel
(`<extra_id_0> span <extra_id_1> ...`). The paper's "span corruption + sentinel" setting
prepends the first sentinel to every downstream target, so the target looks like a
pretraining target; the postprocessor removes it again before the metric.

`sentinel_spec(spec)` turns any `TaskSpec` into that form, registered as
`<name>_sentinel`: a text preprocessor prefixes `targets` with `<extra_id_0> ` (the T5 / mT5
SentencePiece vocabularies encode that text as the sentinel id, vocab_size - 1), label
strings (rank classification) get the same prefix, and the postprocessor strips the leading
sentinel, cuts the text at any later sentinel (our choice: what a span-corruption model
writes after the first span is not the answer), then applies the task's own postprocessor.

Registered here: every SuperGLUE task without the task-name prefix,
`super_glue_<task>_noprefix_sentinel`, and the mixture `super_glue_8_noprefix_sentinel`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import tensorflow as tf

from prompt_jax.data import postprocessors as post
from prompt_jax.data.registry import (MixtureSpec, TaskSpec, add_mixture, add_task,
                                      rate_num_examples, task_spec)

SENTINEL = "<extra_id_0>"
SUFFIX = "_sentinel"
_LATER_SENTINEL = re.compile(r"<extra_id_\d+>")


def prefix_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Text preprocessor: `targets` -> '<extra_id_0> ' + targets."""
  def fn(ex):
    return {**ex, "targets": tf.strings.join([SENTINEL + " ", ex["targets"]])}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def strip_sentinel(text: Any) -> str:
  """'<extra_id_0> yes <extra_id_1> x' -> 'yes': the leading sentinel off, cut at the next."""
  text = post.as_text(text).strip()
  if text.startswith(SENTINEL):
    text = text[len(SENTINEL):]
  return _LATER_SENTINEL.split(text, maxsplit=1)[0].strip()


@dataclasses.dataclass(frozen=True)
class StripThen:
  """Postprocessor: `strip_sentinel`, then the task's own postprocessor (if any)."""
  inner: Callable[..., Any] | None

  def __call__(self, output: Any, example: Any = None, is_target: bool = False) -> Any:
    text = strip_sentinel(output)
    if self.inner is None:
      return text
    return self.inner(text, example=example, is_target=is_target)


def sentinel_spec(spec: TaskSpec, name: str | None = None) -> TaskSpec:
  """`spec` with sentinel-prefixed targets (and labels), registered as `<name>_sentinel`."""
  labels = None if spec.labels is None else tuple(f"{SENTINEL} {l}" for l in spec.labels)
  return dataclasses.replace(
      spec, name=name or spec.name + SUFFIX,
      preprocessors=(*spec.preprocessors, prefix_targets),
      postprocess_fn=StripThen(spec.postprocess_fn), labels=labels,
      description=f"{spec.description} (targets prefixed with {SENTINEL})")


def register_sentinel_super_glue() -> list[str]:
  """`super_glue_<task>_noprefix_sentinel` for SuperGLUE-8 (+ mixture); returns the names."""
  from prompt_jax.data.suites import SUPER_GLUE_8
  from prompt_jax.data.superglue import super_glue_task_name
  names = [add_task(sentinel_spec(task_spec(super_glue_task_name(t, False))))
           for t in SUPER_GLUE_8]
  add_mixture(MixtureSpec("super_glue_8_noprefix" + SUFFIX,
                          tuple((n, rate_num_examples) for n in names),
                          description="SuperGLUE-8, no prefix, sentinel targets"))
  return names
