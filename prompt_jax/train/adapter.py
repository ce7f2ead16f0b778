"""The model adapter: one object that knows how to train, decode and score a prompted T5.

T5X's `BaseModel` idea: the loop, the eval step, the evaluator, decoding, the demo and the
bench never call the network directly; they call `loss`, `predict` and `score` here.

The loss is T5's token cross-entropy plus z-loss, plus any number of extra terms, which
arrive two ways (both add to the loss and are reported as `loss/<name>` in the metrics):

* A module sows a scalar: `self.sow("losses", "l2", value)` anywhere in the prompt module
  (or the network). `loss` applies the model with the `losses` collection mutable and adds
  every sown value; the name reported is the sow's path, e.g. `loss/prompt/l2`.
* A `LossTerm` given to the adapter: a function of a `LossContext` (the module, the merged
  parameters, the batch, the logits, a dropout key) returning a scalar. It runs inside the
  same jitted step, so it can run a second forward pass with other (frozen) parameters,
  e.g. a teacher prompt kept in the frozen tree under its own top-level key.

A module may also sow *diagnostics*, values to watch that are not part of the objective:
`self.sow("diagnostics", "gate", g)` is reported as `diag/<path>` (a scalar) or
`diag/<path>/<i>` (each entry of a vector or array, flattened) in the metrics and is never
added to the loss. Several sows of one path are averaged.

Metrics are `{name: (sum, count)}` pairs, so averages stay exact when summed across steps
or batches: `reduce_metrics` divides once.

    adapter = ModelAdapter(T5Transformer(config, prompt=Prompt(20)),
                           loss_terms=(("kd", my_kd_term),))
    loss, metrics = adapter.loss(params, batch, enable_dropout=True, dropout_rng=key)
    tokens = adapter.predict(params, batch["encoder_input_tokens"], max_decode_length=8)
    ll = adapter.score(params, inputs, targets)  # [B] log-likelihoods
    table = adapter.score_labels(params, inputs, labels)  # [B, C], labels [C, T]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.models import decoding
from prompt_jax.train import losses

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = dict[str, tuple[Array, Array]]  # name -> (sum, count)


@dataclasses.dataclass(frozen=True)
class LossContext:
  """What a loss term sees: everything the step has, nothing it could mutate.

  Attributes:
    module: the network (a `T5Transformer`).
    params: the full, merged parameter tree (trainable and frozen).
    batch: the batch (`encoder_input_tokens`, `decoder_*`, `task_ids`).
    logits: [B, T, V] float32 logits of the main forward pass.
    enable_dropout: whether the step trains with dropout.
    dropout_rng: a key of the term's own (None without dropout).
  """
  module: nn.Module
  params: Any
  batch: Batch
  logits: Array
  enable_dropout: bool
  dropout_rng: Array | None

  def forward(self, params: Any) -> Array:
    """A second teacher-forced forward pass of the same batch with other parameters."""
    return forward(self.module, params, self.batch, enable_dropout=self.enable_dropout,
                   dropout_rng=self.dropout_rng)[0]


LossTerm = Callable[[LossContext], Array]


def forward(module: nn.Module, params: Any, batch: Batch, *, enable_dropout: bool,
            dropout_rng: Array | None) -> tuple[Array, dict[str, Array]]:
  """Teacher-forced logits [B, T, V] and the summed sown loss terms {path: scalar}."""
  logits, sown, _ = forward_with_diagnostics(module, params, batch,
                                             enable_dropout=enable_dropout,
                                             dropout_rng=dropout_rng)
  return logits, sown


def forward_with_diagnostics(module: nn.Module, params: Any, batch: Batch, *,
                             enable_dropout: bool, dropout_rng: Array | None
                             ) -> tuple[Array, dict[str, Array], dict[str, Array]]:
  """`forward` plus the sown diagnostics {name: scalar} (`diag/...` metric names)."""
  rngs = {"dropout": dropout_rng} if enable_dropout else None
  logits, state = module.apply(
      {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      enable_dropout=enable_dropout, task_ids=batch.get("task_ids"), rngs=rngs,
      mutable=["losses", "diagnostics"])
  sown = flax.traverse_util.flatten_dict(flax.core.unfreeze(state.get("losses", {})), sep="/")
  # `sow` appends to a tuple per call site; a module called twice contributes twice.
  losses_ = {path: sum(jnp.asarray(v, jnp.float32).sum() for v in values)
             for path, values in sown.items()}
  return logits, losses_, _diagnostics(state.get("diagnostics", {}))


def _diagnostics(collection: Any) -> dict[str, Array]:
  """Sown diagnostics -> {"diag/<path>[/<i>]": float32 scalar}, several sows averaged."""
  out = {}
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(collection), sep="/")
  for path, values in flat.items():
    mean = sum(jnp.asarray(v, jnp.float32) for v in values) / len(values)
    if mean.ndim == 0:
      out[f"diag/{path}"] = mean
    else:
      for i, value in enumerate(mean.reshape(-1)):
        out[f"diag/{path}/{i}"] = value
  return out


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
  """loss / predict / score for a (prompted) encoder-decoder.

  Attributes:
    module: the network, a `prompt_jax.models.T5Transformer` (with its prompt module).
    z_loss: coefficient of T5X's `log(Z)^2` auxiliary loss.
    loss_terms: ordered (name, LossTerm) pairs added to the loss.
  """
  module: nn.Module
  z_loss: float = 1e-4
  loss_terms: tuple[tuple[str, LossTerm], ...] = ()

  def __post_init__(self):
    names = [name for name, _ in self.loss_terms]
    if len(set(names)) != len(names):
      raise ValueError(f"Loss term names must be unique, got {names}.")

  @property
  def config(self):
    return self.module.config

  def loss(self, params: Any, batch: Batch, *, enable_dropout: bool = False,
           dropout_rng: Array | None = None) -> tuple[Array, Metrics]:
    """The scalar objective and its metrics for one batch.

    Args:
      params: the full parameter tree.
      batch: `encoder_input_tokens` [B, L], `decoder_input_tokens`,
        `decoder_target_tokens`, `decoder_loss_weights` [B, T], optional `task_ids` [B].
      enable_dropout: train-mode forward pass (needs `dropout_rng`).
      dropout_rng: the step's dropout key.

    Returns:
      (loss, metrics): loss = mean token cross-entropy + z-loss + every extra term;
      metrics {name: (sum, count)} with `loss`, `cross_entropy`, `z_loss`,
      `token_accuracy`, `loss/<name>` for each extra term and `diag/<name>` for each
      sown diagnostic.
    """
    main_rng = term_rng = None
    if enable_dropout:
      main_rng, term_rng = jax.random.split(dropout_rng)
    logits, sown, diagnostics = forward_with_diagnostics(
        self.module, params, batch, enable_dropout=enable_dropout, dropout_rng=main_rng)
    sums = losses.cross_entropy_sums(logits, batch["decoder_target_tokens"],
                                     batch["decoder_loss_weights"], self.z_loss)
    weight = jnp.maximum(sums["weight_sum"], 1.0)
    total = sums["loss_sum"] / weight
    one = jnp.ones((), jnp.float32)
    metrics: Metrics = {
        "cross_entropy": (sums["loss_sum"] - sums["z_loss_sum"], weight),
        "z_loss": (sums["z_loss_sum"], weight),
        "token_accuracy": (sums["correct_sum"], weight),
    }
    extra = dict(sown)
    ctx = LossContext(self.module, params, batch, logits, enable_dropout, None)
    for i, (name, term) in enumerate(self.loss_terms):
      if name in extra:
        raise ValueError(f"Loss term {name!r} is both sown and given to the adapter.")
      rng = jax.random.fold_in(term_rng, i) if enable_dropout else None
      extra[name] = jnp.asarray(term(dataclasses.replace(ctx, dropout_rng=rng)), jnp.float32)
    for name, value in extra.items():
      if jnp.ndim(value) != 0:
        raise ValueError(f"Loss term {name!r} must be a scalar, got shape {jnp.shape(value)}.")
      total = total + value
      metrics[f"loss/{name}"] = (value, one)
    for name, value in diagnostics.items():  # Reported, never added to the loss.
      metrics[name] = (value, one)
    metrics["loss"] = (total, one)
    return total, metrics

  def predict(self, params: Any, encoder_input_tokens: Array, *, max_decode_length: int,
              task_ids: Array | None = None, beam_size: int = 1,
              alpha: float = 0.6) -> Array:
    """Decoded target tokens [B, T] (EOS kept, then 0): greedy, or the best beam."""
    if beam_size == 1:
      return decoding.greedy_decode(self.module, params, encoder_input_tokens,
                                    max_decode_length=max_decode_length, task_ids=task_ids)
    tokens, _ = decoding.beam_search(self.module, params, encoder_input_tokens,
                                     beam_size=beam_size, max_decode_length=max_decode_length,
                                     alpha=alpha, task_ids=task_ids)
    return tokens[:, 0]

  def score(self, params: Any, encoder_input_tokens: Array, target_tokens: Array, *,
            task_ids: Array | None = None) -> Array:
    """Per-example log-likelihood [B] of the targets (rank classification)."""
    return decoding.score_sequences(self.module, params, encoder_input_tokens, target_tokens,
                                    task_ids=task_ids)

  def score_labels(self, params: Any, encoder_input_tokens: Array, label_tokens: Array, *,
                   task_ids: Array | None = None) -> Array:
    """Log-likelihood [B, C] of each of C labels [C, T], one encoder pass per example."""
    return decoding.score_labels(self.module, params, encoder_input_tokens, label_tokens,
                                 task_ids=task_ids)


def as_adapter(model: nn.Module | ModelAdapter) -> ModelAdapter:
  """An adapter for a bare network (default loss), or the adapter itself."""
  return model if isinstance(model, ModelAdapter) else ModelAdapter(model)


def reduce_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
  """{name: (sum, count)} -> {name: sum / count} as Python floats (one device_get)."""
  host = jax.device_get(dict(metrics))
  out = {}
  for name, value in host.items():
    total, count = (value if isinstance(value, tuple) else (value, 1.0))
    count = float(np.asarray(count))
    out[name] = float(np.asarray(total)) / count if count else 0.0
  return out


def add_metrics(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> dict[str, Any]:
  """Elementwise sum of two metric dicts (for accumulating over batches)."""
  if not a:
    return dict(b)
  return {k: jax.tree_util.tree_map(lambda x, y: x + y, a[k], b[k]) for k in b}
