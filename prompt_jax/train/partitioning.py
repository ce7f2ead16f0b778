"""Logical -> mesh partitioning on a ('data', 'model') mesh.

Parameters and key activations carry T5X's logical axis names; `logical_axis_rules` maps
them onto the mesh in one place. Prompt axes stay replicated: a prompt is kilobytes, and
replicating it keeps the prompt's gradient an all-reduce over `data` only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")
Rules = Sequence[tuple[str, str | None]]


def logical_axis_rules() -> tuple[tuple[str, str | None], ...]:
  """The logical -> mesh axis table (T5X's standard rules for a 2-D mesh)."""
  return (
      ("batch", "data"),
      ("vocab", "model"),
      ("mlp", "model"),
      ("heads", "model"),
      ("joined_kv", "model"),
      ("kv", None),
      ("embed", None),
      ("length", None),
      ("relpos_buckets", None),
      ("prompt", None),
      ("prompt_embed", None),
      ("prompt_tasks", None),
  )


def make_mesh(num_partitions: int = 1, devices: Sequence[jax.Device] | None = None,
              dcn_mesh_shape: Sequence[int] | None = None) -> Mesh:
  """A (data, model) mesh: model-parallel size `num_partitions`, data-parallel the rest.

  On a platform with a physical topology (TPU, GPU) the device grid comes from
  `jax.experimental.mesh_utils.create_device_mesh`, so the `model` axis runs over
  neighbouring chips; elsewhere (CPU, emulated devices) devices keep their id order, so the
  processes of a multi-process job fill `data` first (each holds whole `data` rows when
  its devices cover `model`).

  `dcn_mesh_shape` = (processes along `data`, processes along `model`) places the processes
  explicitly, as T5X's and MaxText's DCN mesh shapes do: each process then holds a
  `(data / dcn[0], model / dcn[1])` block (`mesh_utils.create_hybrid_device_mesh` with the
  process as the granule). E.g. 2 processes x 2 devices with `num_partitions=2`: `(2, 1)`
  gives each process a `data` row, `(1, 2)` splits the `model` axis across the processes.
  """
  devices = list(devices if devices is not None else jax.devices())
  if num_partitions < 1 or len(devices) % num_partitions:
    raise ValueError(f"NUM_PARTITIONS={num_partitions} must divide the device count "
                     f"{len(devices)} (data-parallel size = devices / NUM_PARTITIONS).")
  shape = (len(devices) // num_partitions, num_partitions)
  if dcn_mesh_shape is not None:
    return Mesh(_hybrid_grid(shape, tuple(dcn_mesh_shape), devices), MESH_AXES)
  grid = None
  if devices[0].platform in ("tpu", "gpu") and len(devices) > 1:
    from jax.experimental import mesh_utils  # Local: only accelerators have a topology.
    try:
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError) as e:
      logging.warning("No topology-aware %s mesh for these devices (%s); using id order.",
                      shape, e)
  if grid is None:
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def check_dcn_mesh_shape(shape: tuple[int, int], dcn_mesh_shape: Sequence[Any],
                         num_processes: int) -> tuple[int, int]:
  """`dcn_mesh_shape` as (data, model) process counts that tile the mesh `shape`.

  Raises ValueError (with the fix) when it does not: two positive ints, their product the
  number of processes, each dividing its mesh axis.
  """
  dcn = tuple(dcn_mesh_shape)
  if len(dcn) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                              for n in dcn):
    raise ValueError(f"DCN_MESH_SHAPE={dcn_mesh_shape!r} must be two positive ints "
                     "(processes along data, processes along model), e.g. (2, 1).")
  if dcn[0] * dcn[1] != num_processes:
    raise ValueError(f"DCN_MESH_SHAPE={dcn} places {dcn[0] * dcn[1]} processes but the job "
                     f"has {num_processes}; their product must be the process count.")
  if shape[0] % dcn[0] or shape[1] % dcn[1]:
    raise ValueError(f"DCN_MESH_SHAPE={dcn} does not tile the mesh (data={shape[0]}, "
                     f"model={shape[1]}): each entry must divide its mesh axis.")
  return dcn  # type: ignore[return-value]


def _hybrid_grid(shape: tuple[int, int], dcn: tuple[int, int],
                 devices: Sequence[jax.Device]) -> np.ndarray:
  num_processes = len({d.process_index for d in devices})
  dcn = check_dcn_mesh_shape(shape, dcn, num_processes)
  from jax.experimental import mesh_utils
  local = (shape[0] // dcn[0], shape[1] // dcn[1])
  return mesh_utils.create_hybrid_device_mesh(local, dcn, devices, process_is_granule=True,
                                              allow_split_physical_axes=True)


def maybe_initialize_distributed() -> None:
  """Joins a multi-host job if this process is one (see `multihost.initialize`)."""
  from prompt_jax.train import multihost
  multihost.initialize()


@contextlib.contextmanager
def rules_context(mesh: Mesh, rules: Rules | None = None) -> Iterator[None]:
  """The mesh and the logical-axis rules, so `nn.with_logical_constraint` takes effect."""
  rules = tuple(rules if rules is not None else logical_axis_rules())
  # Flax's constraints read the abstract mesh (`with mesh:` does not set it); this works
  # inside a traced function, where `jax.set_mesh` is refused.
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
    yield


def with_rules(fn: Callable[..., Any], mesh: Mesh, rules: Rules | None = None
               ) -> Callable[..., Any]:
  """`fn` traced inside `rules_context` (wrap a function before `jax.jit`)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with rules_context(mesh, rules):
      return fn(*args, **kwargs)

  return wrapped


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, name: str) -> PartitionSpec:
  """Replicates any dimension the mesh axis does not divide (tiny test models)."""
  fitted = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    size = 1 if axis is None else int(np.prod([mesh.shape[a] for a in np.atleast_1d(axis)]))
    if axis is not None and dim % size:
      logging.info("%s: dim %d not divisible by mesh axis %s=%d; replicated.", name, dim,
                   axis, size)
      axis = None
    fitted.append(axis)
  return PartitionSpec(*fitted)


def shardings_for(boxed_tree: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (e.g. `eval_shape(init)`).

  Leaves without logical names are replicated.
  """
  rules = tuple(rules if rules is not None else logical_axis_rules())
  logical = nn.get_partition_spec(boxed_tree)
  mesh_specs = nn.logical_to_mesh(logical, rules)
  shapes = nn.unbox(boxed_tree)
  paths = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_specs = jax.tree_util.tree_leaves(mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  out = [NamedSharding(mesh, _fit_spec(s, leaf.shape, mesh, jax.tree_util.keystr(p)))
         for (p, leaf), s in zip(paths, flat_specs)]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), out)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over `data` on their leading axis."""
  return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
