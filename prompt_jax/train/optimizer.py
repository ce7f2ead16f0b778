"""Which parameters train, in which group, and the optimizer that trains each group.

Freezing is explicit, total and checked: `label_params` assigns every parameter path a group
with an ordered list of `(regex, group)` rules and raises on a leaf no rule covers. The group
`"frozen"` is special: its leaves get no gradient and no optimizer state (the train step
differentiates only the other groups' subtree, `split_params`). Every other group has its own
`OptimizerConfig` (learning rate, Adafactor or AdamW settings). The optimizer is an
`optax.multi_transform` over the group labels, whose frozen label is `optax.set_to_zero()`: a
second guarantee that holds even if a full tree is handed to it. (`optax.masked` would pass
unmasked updates through unchanged, so it is not a freezing tool.)

    groups = ParamGroups(
        rules=((r"^prompt/scale$", "scale"), (r"^prompt/", "prompt"), (r".*", "frozen")),
        optimizers={"prompt": OptimizerConfig(learning_rate=0.3),
                    "scale": OptimizerConfig(learning_rate=0.003)})
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

TRAINABLE, FROZEN = "trainable", "frozen"  # The default trainable group; the frozen label.
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


def check_rules(rules: Rules) -> None:
  """Each rule is a (regex, group name) pair with a compilable regex."""
  for rule in rules:
    if len(rule) != 2 or not all(isinstance(x, str) for x in rule) or not rule[1]:
      raise ValueError(f"Parameter rule {rule!r} must be a (regex, group name) pair of strings.")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise ValueError(f"Parameter rule {rule!r}: bad regex ({e}).") from None


def label_params(params: Mapping[str, Any], rules: Rules) -> dict:
  """Labels each leaf with the group of the first rule whose regex matches its path.

  Paths are '/'-joined (`prompt/prompt`, `encoder/layers_0/mlp/wo/kernel`); matching is
  `re.search`. The label FROZEN freezes; any other label names a trainable group.

  Raises:
    ValueError: naming every parameter no rule covers.
  """
  check_rules(rules)
  labels, missing = {}, []
  for path in _flat(params):
    label = next((lab for pattern, lab in rules if re.search(pattern, path)), None)
    if label is None:
      missing.append(path)
    labels[path] = label
  if missing:
    raise ValueError(f"No parameter rule covers {len(missing)} parameter(s): "
                     f"{missing[:10]}; add a rule (regex, group) for them (group "
                     f"{FROZEN!r} freezes).")
  return traverse_util.unflatten_dict(labels, sep="/")


def split_params(params: Mapping[str, Any], labels: Mapping[str, Any]) -> tuple[dict, dict]:
  """Splits a tree into (trainable, frozen) subtrees by its labels (any non-frozen group trains)."""
  flat, flat_labels = _flat(params), _flat(labels)
  parts: dict[bool, dict] = {True: {}, False: {}}
  for path, value in flat.items():
    parts[flat_labels[path] != FROZEN][path] = value
  return tuple(traverse_util.unflatten_dict(parts[k], sep="/") for k in (True, False))


def merge_params(*trees: Mapping[str, Any]) -> dict:
  """Deep, checked union of parameter trees (the inverse of `split_params`).

  Trees are merged leaf by leaf, so `prompt/` may be split between a trainable and a frozen
  tree. A leaf path present in two trees is an error, as is a path that is a leaf in one
  tree and a subtree in another.
  """
  flat: dict[str, Any] = {}
  for tree in trees:
    for path, value in _flat(tree).items():
      if path in flat:
        raise ValueError(f"Parameter {path!r} is in two of the merged trees (both trainable "
                         "and frozen?).")
      flat[path] = value
  paths = sorted(flat)
  for a, b in zip(paths, paths[1:]):
    if b.startswith(a + "/"):
      raise ValueError(f"Parameter {a!r} is a leaf in one tree and has children ({b!r}) in "
                       "another.")
  return traverse_util.unflatten_dict(flat, sep="/")


def count_params(tree: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


def log_param_counts(trainable: Any, frozen: Any) -> tuple[int, int]:
  n_train, n_frozen = count_params(trainable), count_params(frozen)
  logging.info("Parameters: %s trainable, %s frozen (%.4f%% trainable).", f"{n_train:,}",
               f"{n_frozen:,}", 100.0 * n_train / max(1, n_train + n_frozen))
  return n_train, n_frozen


OPTIMIZER_KINDS = ("adafactor", "adamw")


class OptimizerConfigError(ValueError):
  """Optimizer settings that cannot work (a user error: the message says how to fix it)."""


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """One group's optimizer: Adafactor (default) or AdamW, selected by `kind`.

  Adafactor as in Lester et al. / the reference implementation (constant LR 0.3): the
  `decay_rate` ... `min_dim_size_to_factor` fields.

  AdamW (`kind="adamw"`; the setting of methods trained with transformers-style optimizers,
  e.g. gin/methods/ipt_*.gin): a linear warmup from 0 over
  `warmup_fraction` of `total_steps` (or `warmup_steps` when > 0), then a linear decay to 0
  at `total_steps`, gradients clipped to global norm `max_grad_norm` first (the norm is over
  this group's leaves: with one trainable group, the global norm). `adamw_weight_decay` is
  decoupled weight decay (default: none). `total_steps` is required (gin: bind it to
  %TRAIN_STEPS).
  """
  learning_rate: float = 0.3
  decay_rate: float = 0.8
  multiply_by_parameter_scale: bool = False
  weight_decay_rate: float = 1e-5
  clipping_threshold: float = 1.0
  # Factored second moments only pay off for large matrices; the prompt stays unfactored.
  factored: bool = False
  min_dim_size_to_factor: int = 128
  kind: str = "adafactor"
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  adamw_weight_decay: float = 0.0
  total_steps: int = 0
  warmup_fraction: float = 0.06
  warmup_steps: int = 0
  max_grad_norm: float | None = 0.1

  def __post_init__(self):
    err = OptimizerConfigError
    if self.kind not in OPTIMIZER_KINDS:
      raise err(f"OptimizerConfig.kind must be one of {OPTIMIZER_KINDS}, got {self.kind!r}.")
    if self.kind != "adamw":
      return
    if (isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int)
        or self.total_steps < 1):
      raise err(f"AdamW's warmup-then-decay schedule needs total_steps >= 1, got "
                f"{self.total_steps!r} (gin: optim.OptimizerConfig.total_steps = %TRAIN_STEPS).")
    if not 0.0 <= self.warmup_fraction < 1.0 or self.warmup_steps < 0:
      raise err(f"warmup_fraction must be in [0, 1) and warmup_steps >= 0, got "
                f"{self.warmup_fraction}, {self.warmup_steps}.")
    if self.resolved_warmup_steps() >= self.total_steps:
      raise err(f"The warmup ({self.resolved_warmup_steps()} steps) must be shorter than "
                f"total_steps={self.total_steps}.")

  def resolved_warmup_steps(self) -> int:
    """Warmup length in steps: `warmup_steps`, else `warmup_fraction * total_steps`."""
    return self.warmup_steps or int(self.warmup_fraction * self.total_steps)


# Model tuning follows T5X fine-tuning: factored Adafactor, constant LR 1e-3.
MODEL_TUNING_OPTIMIZER = OptimizerConfig(learning_rate=1e-3, multiply_by_parameter_scale=False,
                                         weight_decay_rate=0.0, factored=True)


def adafactor(config: OptimizerConfig) -> optax.GradientTransformation:
  """The optax Adafactor of one group."""
  return optax.adafactor(
      learning_rate=config.learning_rate,
      min_dim_size_to_factor=config.min_dim_size_to_factor,
      decay_rate=config.decay_rate,
      multiply_by_parameter_scale=config.multiply_by_parameter_scale,
      clipping_threshold=config.clipping_threshold,
      weight_decay_rate=config.weight_decay_rate or None,
      factored=config.factored,
  )


def warmup_linear_decay(config: OptimizerConfig) -> optax.Schedule:
  """0 -> learning_rate over the warmup, then linearly to 0 at total_steps (then 0).

  The shape of transformers' `get_linear_schedule_with_warmup`: the first update (count 0)
  has learning rate 0 when there is a warmup.
  """
  warmup, total, lr = config.resolved_warmup_steps(), config.total_steps, config.learning_rate
  decay = optax.linear_schedule(lr, 0.0, total - warmup)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def adamw(config: OptimizerConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on the warmup-then-decay schedule."""
  parts = []
  if config.max_grad_norm is not None:
    parts.append(optax.clip_by_global_norm(config.max_grad_norm))
  parts.append(optax.adamw(warmup_linear_decay(config), b1=config.b1, b2=config.b2,
                           eps=config.eps, weight_decay=config.adamw_weight_decay))
  return optax.chain(*parts)


def group_transform(config: OptimizerConfig) -> optax.GradientTransformation:
  """The optimizer of one group, by `config.kind`."""
  return adamw(config) if config.kind == "adamw" else adafactor(config)


@dataclasses.dataclass(frozen=True)
class ParamGroups:
  """Ordered `(regex, group)` rules and each trainable group's optimizer settings.

  Attributes:
    rules: the first rule whose regex matches a parameter's path assigns its group; group
      FROZEN ("frozen") freezes it. Every leaf must be covered.
    optimizers: group name -> OptimizerConfig, for every non-frozen group the rules name.
  """
  rules: Rules
  optimizers: Mapping[str, OptimizerConfig]

  def __post_init__(self):
    check_rules(self.rules)
    named = {g for _, g in self.rules if g != FROZEN}
    if FROZEN in self.optimizers:
      raise ValueError(f"Group {FROZEN!r} freezes; it takes no optimizer settings.")
    missing = sorted(named - set(self.optimizers))
    if missing:
      raise ValueError(f"Parameter group(s) {missing} have rules but no optimizer settings; "
                       f"give each an OptimizerConfig (groups with settings: "
                       f"{sorted(self.optimizers)}).")
    unused = sorted(set(self.optimizers) - named)
    if unused:
      raise ValueError(f"Optimizer settings for group(s) {unused} that no rule names "
                       f"(rules name {sorted(named)}).")
    for name, cfg in self.optimizers.items():
      if not isinstance(cfg, OptimizerConfig):
        raise ValueError(f"Group {name!r}: optimizer settings must be an OptimizerConfig, "
                         f"got {type(cfg).__name__}.")

  def labels(self, params: Mapping[str, Any]) -> dict:
    return label_params(params, self.rules)

  def group_counts(self, params: Mapping[str, Any]) -> dict[str, int]:
    """Number of parameters (scalars) per group, frozen included."""
    flat, flat_labels = _flat(params), _flat(self.labels(params))
    counts = {g: 0 for _, g in self.rules}
    for path, value in flat.items():
      counts[flat_labels[path]] += int(np.prod(np.shape(value)))
    return counts


def as_param_groups(rules: Rules, opt_config: OptimizerConfig | Mapping[str, OptimizerConfig]
                    ) -> ParamGroups:
  """Groups from rules and either one config for every trainable group or one per group."""
  if isinstance(opt_config, OptimizerConfig):
    opt_config = {g: opt_config for _, g in rules if g != FROZEN}
  return ParamGroups(tuple(tuple(r) for r in rules), dict(opt_config))


PROMPT_TUNING = ParamGroups(PROMPT_TUNING_RULES, {TRAINABLE: OptimizerConfig()})
MODEL_TUNING = ParamGroups(MODEL_TUNING_RULES, {TRAINABLE: MODEL_TUNING_OPTIMIZER})


def make_optimizer(groups: ParamGroups | OptimizerConfig,
                   rules: Rules | None = None) -> optax.GradientTransformation:
  """Each group's optimizer (Adafactor or AdamW), `set_to_zero` for frozen leaves.

  `make_optimizer(ParamGroups(...))`, or `make_optimizer(OptimizerConfig(...), rules)` for
  one setting shared by every trainable group.
  """
  if not isinstance(groups, ParamGroups):
    if rules is None:
      raise ValueError("make_optimizer(OptimizerConfig, rules) needs the rules.")
    groups = as_param_groups(rules, groups)
  transforms = {name: group_transform(cfg) for name, cfg in groups.optimizers.items()}
  transforms[FROZEN] = optax.set_to_zero()
  return optax.multi_transform(transforms, groups.labels)
