"""Which parameters train, and the optimizer that trains them.

Freezing is explicit, total and checked: `label_params` classifies every parameter path with
an ordered list of regexes and raises on a leaf no rule covers. The train step then
differentiates only the trainable subtree (`split_params`), and the optimizer is an
`optax.multi_transform` whose frozen label is `optax.set_to_zero()`: a second guarantee that
holds even if a full tree is handed to it. (`optax.masked` would pass unmasked updates
through unchanged, so it is not a freezing tool.)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax
from flax import traverse_util

TRAINABLE, FROZEN = "trainable", "frozen"
Rules = Sequence[tuple[str, str]]

# Prompt tuning: only the prompt (and any prompt-side parameters) trains.
PROMPT_TUNING_RULES: Rules = (
    (r"^prompt/", TRAINABLE),
    (r"^(token_embedder|encoder|decoder)/", FROZEN),
)
# Model tuning: the baseline, and how the skill-gym backbone is built.
MODEL_TUNING_RULES: Rules = ((r".*", TRAINABLE),)


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(dict(tree), sep="/")


def label_params(params: Mapping[str, Any], rules: Rules) -> dict:
  """Labels each leaf TRAINABLE or FROZEN by the first matching regex over its path.

  Raises:
    ValueError: naming every parameter no rule covers.
  """
  for _, label in rules:
    if label not in (TRAINABLE, FROZEN):
      raise ValueError(f"Rule label {label!r} must be {TRAINABLE!r} or {FROZEN!r}.")
  labels, missing = {}, []
  for path in _flat(params):
    label = next((lab for pattern, lab in rules if re.search(pattern, path)), None)
    if label is None:
      missing.append(path)
    labels[path] = label
  if missing:
    raise ValueError(f"No trainable/frozen rule covers {len(missing)} parameter(s): "
                     f"{missing[:10]}; add a rule (regex, 'trainable'|'frozen') for them.")
  return traverse_util.unflatten_dict(labels, sep="/")


def split_params(params: Mapping[str, Any], labels: Mapping[str, Any]) -> tuple[dict, dict]:
  """Splits a tree into (trainable, frozen) subtrees by its labels."""
  flat, flat_labels = _flat(params), _flat(labels)
  parts = {TRAINABLE: {}, FROZEN: {}}
  for path, value in flat.items():
    parts[flat_labels[path]][path] = value
  return tuple(traverse_util.unflatten_dict(parts[k], sep="/") for k in (TRAINABLE, FROZEN))


def merge_params(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict:
  """Inverse of `split_params`; a path present in both is an error."""
  a, b = _flat(trainable), _flat(frozen)
  both = set(a) & set(b)
  if both:
    raise ValueError(f"Parameters both trainable and frozen: {sorted(both)[:10]}.")
  return traverse_util.unflatten_dict({**b, **a}, sep="/")


def count_params(tree: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


def log_param_counts(trainable: Any, frozen: Any) -> tuple[int, int]:
  n_train, n_frozen = count_params(trainable), count_params(frozen)
  logging.info("Parameters: %s trainable, %s frozen (%.4f%% trainable).", f"{n_train:,}",
               f"{n_frozen:,}", 100.0 * n_train / max(1, n_train + n_frozen))
  return n_train, n_frozen


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Adafactor as in Lester et al. / the reference implementation (constant LR 0.3)."""
  learning_rate: float = 0.3
  decay_rate: float = 0.8
  multiply_by_parameter_scale: bool = False
  weight_decay_rate: float = 1e-5
  clipping_threshold: float = 1.0
  # Factored second moments only pay off for large matrices; the prompt stays unfactored.
  factored: bool = False
  min_dim_size_to_factor: int = 128


# Model tuning follows T5X fine-tuning: factored Adafactor, constant LR 1e-3.
MODEL_TUNING_OPTIMIZER = OptimizerConfig(learning_rate=1e-3, multiply_by_parameter_scale=False,
                                         weight_decay_rate=0.0, factored=True)


def make_optimizer(config: OptimizerConfig, rules: Rules) -> optax.GradientTransformation:
  """Adafactor for trainable labels, `set_to_zero` for frozen ones (labels from `rules`)."""
  adafactor = optax.adafactor(
      learning_rate=config.learning_rate,
      min_dim_size_to_factor=config.min_dim_size_to_factor,
      decay_rate=config.decay_rate,
      multiply_by_parameter_scale=config.multiply_by_parameter_scale,
      clipping_threshold=config.clipping_threshold,
      weight_decay_rate=config.weight_decay_rate or None,
      factored=config.factored,
  )
  return optax.multi_transform({TRAINABLE: adafactor, FROZEN: optax.set_to_zero()},
                               lambda tree: label_params(tree, rules))
