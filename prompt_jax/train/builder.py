"""The public builder of a training setup: mesh, shardings, optimizer, jitted steps.

The trainer, the benchmark and any notebook build the same thing the same way:

    setup = builder.build(adapter, opt_lib.PROMPT_TUNING, builder.make_mesh(1))
    state = setup.init_state(trainable, seed=0)
    frozen = setup.put_frozen(frozen)
    state, metrics = setup.step_fn(state, frozen, setup.put_batch(batch))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import partitioning
from prompt_jax.train import step as step_lib

make_mesh = partitioning.make_mesh
maybe_initialize_distributed = partitioning.maybe_initialize_distributed


def abstract_params(module: nn.Module) -> Any:
  """Boxed parameter shapes with logical axes (no compute, no memory)."""
  tokens = jnp.ones((1, 1), jnp.int32)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, tokens,
                                            task_ids=jnp.zeros((1,), jnp.int32)))["params"]


@dataclasses.dataclass
class TrainSetup:
  """Everything one jitted train step needs, on one mesh.

  Attributes:
    adapter: the model adapter the step optimises.
    groups: the parameter groups (which leaves train, with which settings).
    mesh: the ('data', 'model') mesh.
    optimizer: the multi-transform optimizer over the trainable subtree.
    abstract_trainable / abstract_frozen: ShapeDtypeStructs of both subtrees.
    trainable_sharding / frozen_sharding / batch_sharding: their NamedShardings.
    state_sharding: the TrainState's shardings.
    step_fn: `(state, frozen, batch) -> (state, metrics)`, jitted with donation.
    eval_fn: `(trainable, frozen, batch) -> metrics` (teacher-forced, no dropout).
  """
  adapter: adapter_lib.ModelAdapter
  groups: opt_lib.ParamGroups
  mesh: Mesh
  optimizer: optax.GradientTransformation
  abstract_trainable: Any
  abstract_frozen: Any
  trainable_sharding: Any
  frozen_sharding: Any
  batch_sharding: NamedSharding
  state_sharding: step_lib.TrainState
  step_fn: Any
  eval_fn: Any

  def check_trainable(self, trainable: Any) -> None:
    """The trainable subtree has exactly the structure and shapes the groups select."""
    want = {k: tuple(v.shape) for k, v in opt_lib._flat(self.abstract_trainable).items()}
    got = {k: tuple(np.shape(v)) for k, v in opt_lib._flat(trainable).items()}
    if want != got:
      diff = sorted(set(want.items()) ^ set(got.items()))
      raise ValueError(f"The initial trainable parameters do not match the parameter groups' "
                       f"trainable leaves (path, shape) differing: {diff[:10]}.")

  def init_state(self, trainable: Any, seed: int) -> step_lib.TrainState:
    """A fresh TrainState on the mesh (a private copy: the step donates its buffers)."""
    init = lambda tr, rng: step_lib.init_train_state(tr, self.optimizer, rng)
    return jax.jit(init, out_shardings=self.state_sharding)(
        put_global(trainable, self.trainable_sharding), jax.random.PRNGKey(seed))

  def abstract_state(self, trainable: Any) -> step_lib.TrainState:
    """ShapeDtypeStructs (with shardings) of the TrainState, for restoring a checkpoint."""
    shapes = jax.eval_shape(lambda tr: step_lib.init_train_state(
        tr, self.optimizer, jax.random.PRNGKey(0)), trainable)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
        self.state_sharding)

  def put_frozen(self, frozen: Any) -> Any:
    """Frozen params on their shardings (a no-op for params loaded onto them already)."""
    return put_global(frozen, self.frozen_sharding)

  def put_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """The global host batch (the same in every process) -> arrays sharded over `data`.

    Each process places only the rows its own devices hold, found from the sharding's index
    map, so any layout is fed correctly: whole `data` rows per process, or a `model` axis
    spanning processes (their devices then hold the same rows).
    """
    return {k: global_array(np.asarray(v), self.batch_sharding) for k, v in batch.items()}


def put_global(tree: Any, shardings: Any) -> Any:
  """Host values (the same in every process) or jax arrays -> arrays on `shardings`."""
  def one(x, sharding):
    if isinstance(x, jax.Array):
      return x if x.sharding == sharding else jax.device_put(x, sharding)
    return global_array(np.asarray(x), sharding)
  return jax.tree_util.tree_map(one, tree, shardings)


def global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host value every process holds whole (e.g. a global batch).

  Raises:
    ValueError: the leading axis does not split over the mesh axis it is sharded on.
  """
  value = np.asarray(value, jax.dtypes.canonicalize_dtype(value.dtype))  # As jnp.asarray.
  spec = tuple(sharding.spec)
  if spec and spec[0] is not None and value.ndim:
    size = int(np.prod([sharding.mesh.shape[a] for a in np.atleast_1d(spec[0])]))
    if value.shape[0] % size:
      raise ValueError(f"A batch of {value.shape[0]} rows cannot be fed to a mesh whose "
                       f"{spec[0]!r} axis has {size} devices: make BATCH_SIZE a multiple "
                       f"of {size}.")
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def build(model: nn.Module | adapter_lib.ModelAdapter, groups: opt_lib.ParamGroups,
          mesh: Mesh, *, enable_dropout: bool = True) -> TrainSetup:
  """Labels every parameter by its group, shards both subtrees, jits the steps."""
  adapter = adapter_lib.as_adapter(model)
  boxed = abstract_params(adapter.module)
  labels = groups.labels(nn.unbox(boxed))
  abstract_trainable, abstract_frozen = opt_lib.split_params(nn.unbox(boxed), labels)
  train_sh, frozen_sh = opt_lib.split_params(partitioning.shardings_for(boxed, mesh), labels)
  optimizer = opt_lib.make_optimizer(groups)
  state_shapes = jax.eval_shape(
      lambda tr: step_lib.init_train_state(tr, optimizer, jax.random.PRNGKey(0)),
      abstract_trainable)
  state_sh = step_lib.state_shardings(state_shapes, train_sh, mesh)
  batch_sh = partitioning.data_sharding(mesh)
  step_fn = step_lib.make_train_step(adapter, optimizer, state_sharding=state_sh,
                                     frozen_sharding=frozen_sh, batch_sharding=batch_sh,
                                     enable_dropout=enable_dropout)
  eval_fn = step_lib.make_eval_step(adapter, param_sharding=train_sh, frozen_sharding=frozen_sh,
                                    batch_sharding=batch_sh)
  return TrainSetup(adapter, groups, mesh, optimizer, abstract_trainable, abstract_frozen,
                    train_sh, frozen_sh, batch_sh, state_sh, step_fn, eval_fn)
