"""Lazy tensor sources, the loud shape check, and the one place checkpoints become arrays.

Every file-based reader (T5X legacy, HF safetensors / flax msgpack / torch) turns a checkpoint
into a flat `{t5x_path: TensorSource}` mapping whose shapes and dtypes are known before any
value is read. `check_against_model` compares that mapping with the shapes the model expects
and raises one error naming every missing, extra and mis-shaped tensor. `materialize` then
builds the arrays, either on the host or straight into a target sharding, where each device's
slice is read on its own (tensorstore slicing for zarr, `get_slice` for safetensors), so a
checkpoint larger than one host's memory can be loaded onto a pod.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  Registers bfloat16 with numpy (safetensors' numpy reader needs it).
import numpy as np
from flax import traverse_util

Index = tuple[slice, ...]
Shape = tuple[int, ...]


class CheckpointError(ValueError):
  """A checkpoint that cannot be read into the model as it is."""


def _full(shape: Shape) -> Index:
  return tuple(slice(None) for _ in shape)


class TensorSource:
  """One tensor of a checkpoint, in T5X layout, read lazily.

  Attributes:
    origin: where the tensor comes from, for error messages ("model.safetensors:q.weight").
  """
  origin: str = "?"

  @property
  def shape(self) -> Shape:
    raise NotImplementedError

  def read(self, index: Index | None = None) -> np.ndarray:
    """Reads `array[index]` (the whole array when `index` is None)."""
    raise NotImplementedError


@dataclasses.dataclass
class ArraySource(TensorSource):
  """A tensor already in memory (inline msgpack arrays, torch state dicts)."""
  array: np.ndarray
  origin: str

  @property
  def shape(self) -> Shape:
    return tuple(self.array.shape)

  def read(self, index: Index | None = None) -> np.ndarray:
    return self.array if index is None else self.array[index]


def _tensorstore_reason(err: Exception) -> str:
  """Tensorstore's error text without the spec JSON and source locations it appends."""
  text = str(err).split(" [tensorstore_spec=", 1)[0].split(" [source locations=", 1)[0]
  return text.strip()


def kvstore_location(kvstore: Mapping[str, Any]) -> str:
  """A tensorstore kvstore spec as a path a user can look at ('/a/b', 'gs://bucket/a/b')."""
  if kvstore.get("driver") == "gcs":
    return f"gs://{kvstore.get('bucket', '?')}/{kvstore.get('path', '')}"
  return str(kvstore.get("path", "?"))


_RECOPY = "copy the checkpoint dir again from its source (nothing was loaded)"


@dataclasses.dataclass
class TensorStoreSource(TensorSource):
  """A tensorstore array (T5X's zarr dirs); only the requested slice is read.

  The array is opened with its own `.zarray` metadata, whose shape must equal the one the
  checkpoint file recorded (`spec["metadata"]["shape"]`, the shape used for the model check).
  A zarr array with a null fill value is read with missing chunks as errors: tensorstore
  would otherwise return zeros for them, silently.
  """
  spec: dict[str, Any]
  origin: str
  checkpoint: str = "?"
  _store: Any = dataclasses.field(default=None, repr=False)

  @property
  def location(self) -> str:
    """The array's dir, for messages."""
    return kvstore_location(self.spec.get("kvstore", {}))

  def _error(self, what: str, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"T5X checkpoint {self.checkpoint}: cannot {what} zarr array {self.location} "
        f"({_tensorstore_reason(err)}). The array's files are damaged or missing; "
        f"{_RECOPY}.")

  def _open(self) -> Any:
    if self._store is not None:
      return self._store
    import tensorstore as ts  # Local: only T5X checkpoints need it.
    spec = {k: v for k, v in self.spec.items() if k != "metadata"}  # Checked below instead.
    try:
      store = ts.open(dict(spec, fill_missing_data_reads=False), read=True, open=True).result()
      if store.fill_value is not None:  # A defined fill value: a missing chunk is legitimate.
        store = ts.open(spec, read=True, open=True).result()
    except ValueError as err:  # Tensorstore's error for missing or undecodable files.
      raise self._error("open", err) from err
    recorded = self.spec.get("metadata", {}).get("shape")
    if recorded is not None and tuple(store.shape) != tuple(int(d) for d in recorded):
      raise CheckpointError(
          f"T5X checkpoint {self.checkpoint}: zarr array {self.location} has shape "
          f"{tuple(store.shape)} in its .zarray metadata, but the checkpoint file records "
          f"{tuple(int(d) for d in recorded)}. The array dir is damaged or belongs to another "
          f"checkpoint; {_RECOPY}.")
    self._store = store
    return store

  @property
  def shape(self) -> Shape:
    metadata_shape = self.spec.get("metadata", {}).get("shape")
    if metadata_shape is not None:
      return tuple(int(d) for d in metadata_shape)
    return tuple(int(d) for d in self._open().shape)

  def read(self, index: Index | None = None) -> np.ndarray:
    store = self._open()
    try:
      return np.asarray(store[index if index is not None else _full(self.shape)].read().result())
    except ValueError as err:
      raise self._error("read", err) from err


@dataclasses.dataclass
class SafetensorsSource(TensorSource):
  """One tensor of a `.safetensors` file; slices are read through `get_slice`."""
  filename: str
  name: str
  file_shape: Shape

  @property
  def origin(self) -> str:  # type: ignore[override]
    return f"{self.filename}:{self.name}"

  @property
  def shape(self) -> Shape:
    return self.file_shape

  def read(self, index: Index | None = None) -> np.ndarray:
    from safetensors import safe_open  # Local: only HF checkpoints need it.
    with safe_open(self.filename, framework="numpy") as f:
      return np.asarray(f.get_slice(self.name)[index if index is not None else
                                               _full(self.file_shape)])


@dataclasses.dataclass
class TransposedSource(TensorSource):
  """A 2-D source read transposed (HF [out, in] Linear weights -> T5X [in, out] kernels)."""
  base: TensorSource

  @property
  def origin(self) -> str:  # type: ignore[override]
    return f"{self.base.origin} (transposed)"

  @property
  def shape(self) -> Shape:
    return tuple(reversed(self.base.shape))

  def read(self, index: Index | None = None) -> np.ndarray:
    base_index = None if index is None else tuple(reversed(index))
    return self.base.read(base_index).T


_SHAPES_CACHE: dict[str, dict[str, Shape]] = {}


def expected_shapes(model: nn.Module) -> dict[str, Shape]:
  """`{t5x_path: shape}` of the model's parameters, from an abstract `init` (no FLOPs).

  Tracing the model takes about a second, so results are cached per module description.
  """
  key = repr(model)
  if key not in _SHAPES_CACHE:
    tokens = jnp.ones((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))
    params = nn.meta.unbox(abstract)["params"]
    _SHAPES_CACHE[key] = {path: tuple(leaf.shape) for path, leaf
                          in traverse_util.flatten_dict(params, sep="/").items()}
  return dict(_SHAPES_CACHE[key])


def check_against_model(sources: Mapping[str, TensorSource], expected: Mapping[str, Shape],
                        *, where: str, unrecognized: Mapping[str, TensorSource] = {},
                        conflicts: Sequence[str] = ()) -> None:
  """Raises one `CheckpointError` naming every missing, extra or mis-shaped tensor.

  Args:
    sources: checkpoint tensors by T5X path.
    expected: the model's parameter shapes by T5X path.
    where: the checkpoint location, for the message.
    unrecognized: checkpoint tensors whose names map to no T5X path, by their own name.
    conflicts: further problem lines found by the reader (e.g. a mis-shaped tied copy).
  """
  problems = list(conflicts)
  for path in sorted(set(expected) - set(sources)):
    problems.append(f"  missing     {path}: expected {expected[path]}, not in the checkpoint")
  for path in sorted(set(sources) - set(expected)):
    src = sources[path]
    problems.append(f"  extra       {path}: found {src.shape} ({src.origin}), not in the model")
  for name in sorted(unrecognized):
    src = unrecognized[name]
    problems.append(f"  extra       {name}: found {src.shape}, no T5 parameter has this name")
  for path in sorted(set(expected) & set(sources)):
    if tuple(sources[path].shape) != tuple(expected[path]):
      problems.append(f"  mis-shaped  {path}: expected {expected[path]}, found "
                      f"{sources[path].shape} ({sources[path].origin})")
  if problems:
    raise CheckpointError(
        f"Checkpoint {where} does not match the model ({len(problems)} problem(s); nothing "
        f"was loaded):\n" + "\n".join(problems))


def resolve_shardings(sharding: Any, model: nn.Module,
                      expected: Mapping[str, Shape]) -> dict[str, jax.sharding.Sharding] | None:
  """Flattens the `sharding` argument of `load_pretrained` to `{t5x_path: Sharding}`.

  Accepts None, one `Sharding` for every leaf, a pytree of shardings matching the params
  (optionally under a `params` key), or a callable `sharding(model)` returning either.
  """
  if sharding is None:
    return None
  tree = sharding(model) if callable(sharding) else sharding
  if isinstance(tree, jax.sharding.Sharding):
    return {path: tree for path in expected}
  tree = nn.meta.unbox(tree)
  if hasattr(tree, "unfreeze"):
    tree = tree.unfreeze()
  if isinstance(tree, Mapping) and set(tree) == {"params"}:
    tree = tree["params"]
  flat = traverse_util.flatten_dict(dict(tree), sep="/")
  missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
  bad = [path for path, s in flat.items() if not isinstance(s, jax.sharding.Sharding)]
  if missing or extra or bad:
    raise ValueError(f"`sharding` does not match the params tree: missing {missing}, extra "
                     f"{extra}, not a jax.sharding.Sharding: {sorted(bad)}.")
  return flat


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
  return np.asarray(x, dtype=dtype)


def _slice_key(index: Index) -> tuple:
  return tuple((s.start, s.stop, s.step) for s in index)


def _callback(source: TensorSource, dtype: np.dtype) -> Callable[[Index], np.ndarray]:
  """A `make_array_from_callback` callback reading each distinct slice once."""
  cache: dict[tuple, np.ndarray] = {}

  def read(index: Index) -> np.ndarray:
    key = _slice_key(index)
    if key not in cache:  # Replicated dims ask for the same slice on several devices.
      cache[key] = _cast(source.read(index), dtype)
    return cache[key]

  return read


def materialize(sources: Mapping[str, TensorSource], *, param_dtype: Any,
                shardings: Mapping[str, jax.sharding.Sharding] | None) -> dict[str, Any]:
  """Reads every source into a nested params dict in T5X layout, cast to `param_dtype`.

  With `shardings` each array is assembled with `jax.make_array_from_callback`, so a host
  reads only the slices its own devices hold.
  """
  dtype = np.dtype(param_dtype)
  flat = {}
  for path, source in sources.items():
    if shardings is None:
      flat[path] = jnp.asarray(_cast(source.read(), dtype))
    else:
      flat[path] = jax.make_array_from_callback(tuple(source.shape), shardings[path],
                                                _callback(source, dtype))
  return traverse_util.unflatten_dict(flat, sep="/")
