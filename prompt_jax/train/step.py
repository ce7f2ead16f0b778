"""The pure train and eval steps.

`train_step(state, frozen, batch, *, adapter, optimizer)` differentiates only `state.params`
(the trainable subtree); `frozen` enters as a constant argument, so no weight gradients and
no optimizer state exist for the frozen model. The objective is `adapter.loss` (cross-entropy,
z-loss and any method's extra terms). `make_train_step` jits it once with explicit shardings
and donation of the state.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import partitioning

Array = jax.Array
Batch = dict[str, Array]
BATCH_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
              "decoder_loss_weights", "task_ids")


@flax.struct.dataclass
class TrainState:
  """Everything training changes (and nothing else): what a checkpoint holds."""
  step: Array
  params: Any  # The trainable subtree.
  opt_state: Any
  rng: Array


def init_train_state(trainable: Any, optimizer: optax.GradientTransformation,
                     rng: Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state=optimizer.init(trainable), rng=rng)


def train_step(state: TrainState, frozen: Any, batch: Batch, *,
               adapter: adapter_lib.ModelAdapter, optimizer: optax.GradientTransformation,
               enable_dropout: bool = True) -> tuple[TrainState, adapter_lib.Metrics]:
  """One optimizer step on the trainable subtree. Returns the new state and metric sums."""
  rng, dropout_rng = jax.random.split(state.rng)

  def loss_fn(trainable):
    return adapter.loss(opt_lib.merge_params(trainable, frozen), batch,
                        enable_dropout=enable_dropout, dropout_rng=dropout_rng)

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  one = jnp.ones((), jnp.float32)
  metrics["grad_norm"] = (optax.global_norm(grads), one)
  # The state that will be saved is checked, not only the loss computed before the update.
  metrics["param_norm"] = (optax.global_norm(params), one)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics


def eval_step(trainable: Any, frozen: Any, batch: Batch, *,
              adapter: adapter_lib.ModelAdapter) -> adapter_lib.Metrics:
  """Teacher-forced loss / token accuracy sums without dropout."""
  return adapter.loss(opt_lib.merge_params(trainable, frozen), batch)[1]


def state_shardings(state_shapes: TrainState, param_shardings: Any, mesh: Mesh) -> TrainState:
  """Shardings for a TrainState: params as given, optimizer leaves replicated or matching.

  Optimizer state leaves that have a parameter's shape take its sharding (Adafactor's
  unfactored `v`); everything else (scalars, factored rows/cols) is replicated.
  """
  repl = partitioning.replicated(mesh)
  by_shape = {}
  for s, sh in zip(jax.tree_util.tree_leaves(state_shapes.params),
                   jax.tree_util.tree_leaves(param_shardings)):
    by_shape.setdefault(tuple(s.shape), sh)
  opt = jax.tree_util.tree_map(lambda s: by_shape.get(tuple(s.shape), repl),
                               state_shapes.opt_state)
  return TrainState(step=repl, params=param_shardings, opt_state=opt, rng=repl)


def make_train_step(model: nn.Module | adapter_lib.ModelAdapter,
                    optimizer: optax.GradientTransformation, *, state_sharding: TrainState,
                    frozen_sharding: Any, batch_sharding: NamedSharding,
                    enable_dropout: bool = True):
  """`train_step` jitted once, with explicit shardings and the state donated."""
  fn = functools.partial(train_step, adapter=adapter_lib.as_adapter(model), optimizer=optimizer,
                         enable_dropout=enable_dropout)
  repl = NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
  # Traced under the logical-axis rules, so the model's activation constraints apply.
  fn = partitioning.with_rules(fn, batch_sharding.mesh)
  return jax.jit(fn, in_shardings=(state_sharding, frozen_sharding, batch_sharding),
                 out_shardings=(state_sharding, repl), donate_argnames=("state",))


def make_eval_step(model: nn.Module | adapter_lib.ModelAdapter, *, param_sharding: Any,
                   frozen_sharding: Any, batch_sharding: NamedSharding):
  fn = functools.partial(eval_step, adapter=adapter_lib.as_adapter(model))
  repl = NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
  fn = partitioning.with_rules(fn, batch_sharding.mesh)
  return jax.jit(fn, in_shardings=(param_sharding, frozen_sharding, batch_sharding),
                 out_shardings=repl)
