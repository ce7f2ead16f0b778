"""T5X checkpoints: the legacy msgpack + zarr format and the Orbax format.

Legacy layout (one step dir, e.g. `checkpoint_1000000/`): a msgpack `checkpoint` file holding
`{"version", "optimizer": {"target": params, "state": optimizer state}}`. Small arrays are
inline (flax's msgpack array extension); large ones are tensorstore specs
`{"driver": "zarr", "kvstore": {"driver": "gfile", "path": <relative to the dir>}, ...}`
pointing at zarr dirs beside the file. Only `target` is read; the optimizer state is ignored.

Orbax layout: a dir with `_METADATA`; params under `target` (T5X) or `params` (flax
TrainState). Both formats work on local paths and on `gs://` (through tensorstore's gcs
driver, never a hand-made downloader).
"""

from __future__ import annotations

import copy
import posixpath
from typing import Any, Mapping

import numpy as np

from prompt_jax.checkpoints.sources import (ArraySource, CheckpointError, Shape, TensorSource,
                                            TensorStoreSource)

LEGACY_FILE = "checkpoint"
ORBAX_MARKER = "_METADATA"
_PARAM_KEYS = ("target", "params")


def _split_gcs(path: str) -> tuple[str, str]:
  """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
  bucket, _, obj = path.removeprefix("gs://").partition("/")
  return bucket, obj


def _is_absolute(path: str) -> bool:
  return path.startswith("/") or "://" in path


def kvstore_for(path: str) -> dict[str, str]:
  """The tensorstore kvstore spec of a local or `gs://` path."""
  if path.startswith("gs://"):
    bucket, obj = _split_gcs(path)
    return {"driver": "gcs", "bucket": bucket, "path": obj}
  if "://" in path:
    raise CheckpointError(f"Unsupported remote path {path!r}: use a local path or gs://.")
  return {"driver": "file", "path": path}


def rewrite_spec(spec: Mapping[str, Any], ckpt_dir: str) -> dict[str, Any]:
  """Makes a T5X tensorstore spec openable: `gfile` paths become `file` or `gcs` kvstores.

  T5X writes `{"driver": "gfile", "path": <path relative to the checkpoint dir>}` (or an
  absolute path / URL in older versions). Relative paths are joined to `ckpt_dir`; `gs://`
  locations become gcs kvstores with bucket and object path; local ones `file` kvstores.

  Args:
    spec: the spec dict as stored in the msgpack file.
    ckpt_dir: the checkpoint dir (local path or `gs://bucket/...`).

  Returns:
    A new spec; the input is not modified.
  """
  out = copy.deepcopy(dict(spec))
  kvstore = out.get("kvstore")
  if isinstance(kvstore, str):  # A URL-form kvstore.
    kvstore = {"driver": "file", "path": kvstore.removeprefix("file://")}
  if not isinstance(kvstore, Mapping) or "driver" not in kvstore:
    raise CheckpointError(f"Tensorstore spec without a usable kvstore: {spec!r}")
  driver = kvstore["driver"]
  if driver in ("gfile", "file"):
    path = str(kvstore["path"])
    full = path if _is_absolute(path) else posixpath.join(str(ckpt_dir), path)
    out["kvstore"] = kvstore_for(full)
  elif driver == "gcs":
    out["kvstore"] = dict(kvstore)
  else:
    raise CheckpointError(f"Unsupported kvstore driver {driver!r} in spec {spec!r}.")
  return out


def read_bytes(path: str) -> bytes:
  """The bytes of a local file or a `gs://` object."""
  if not path.startswith("gs://"):
    with open(path, "rb") as f:
      return f.read()
  import tensorstore as ts  # Local: remote reads only.
  bucket, obj = _split_gcs(path)
  store = ts.KvStore.open({"driver": "gcs", "bucket": bucket}).result()
  result = store.read(obj).result()
  if result.state != "value":
    raise FileNotFoundError(path)
  return bytes(result.value)


def remote_exists(path: str) -> bool:
  """Whether a `gs://` object exists (one key listing, no download)."""
  import tensorstore as ts  # Local: remote reads only.
  bucket, obj = _split_gcs(path)
  store = ts.KvStore.open({"driver": "gcs", "bucket": bucket}).result()
  key = obj.encode()
  keys = store.list(ts.KvStore.KeyRange(inclusive_min=key, exclusive_max=key + b"\x00"))
  return bool(keys.result())


def _is_spec(node: Any) -> bool:
  return isinstance(node, Mapping) and "driver" in node and "kvstore" in node


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Flattens to `{a/b/c: leaf}`, keeping tensorstore specs as leaves."""
  flat = {}
  for key, node in tree.items():
    path = f"{prefix}{key}"
    if isinstance(node, Mapping) and not _is_spec(node):
      flat.update(_flatten(node, path + "/"))
    else:
      flat[path] = node
  return flat


def legacy_sources(ckpt_dir: str) -> dict[str, TensorSource]:
  """The params of a legacy T5X checkpoint dir as lazy sources, by T5X path.

  Args:
    ckpt_dir: the dir holding the msgpack `checkpoint` file (local or `gs://`).

  Returns:
    `{t5x_path: TensorSource}`: inline arrays in memory, zarr arrays unread.
  """
  from flax import serialization  # msgpack decoding of flax's array extension types.
  filename = posixpath.join(str(ckpt_dir), LEGACY_FILE)
  state = serialization.msgpack_restore(read_bytes(filename))
  if "optimizer" in state and "target" in state["optimizer"]:
    target = state["optimizer"]["target"]
  elif "target" in state:
    target = state["target"]
  else:
    raise CheckpointError(f"{filename} has no optimizer/target (top-level keys: "
                          f"{sorted(state)}); not a T5X checkpoint.")
  sources: dict[str, TensorSource] = {}
  for path, leaf in _flatten(target).items():
    if _is_spec(leaf):
      sources[path] = TensorStoreSource(rewrite_spec(leaf, ckpt_dir),
                                        origin=f"zarr {leaf['kvstore'].get('path', '?')}")
    elif isinstance(leaf, (np.ndarray, np.generic)):
      sources[path] = ArraySource(np.asarray(leaf), origin=f"{filename} (inline)")
    else:
      raise CheckpointError(f"{filename}: {path} is neither an array nor a tensorstore "
                            f"spec ({type(leaf).__name__}).")
  return sources


def _orbax_params_metadata(ckpt_dir: str) -> tuple[str, dict[str, Any]]:
  """(params key, nested metadata tree of the params) of an Orbax checkpoint."""
  import orbax.checkpoint as ocp  # Local: orbax is slow to import and only needed here.
  metadata = ocp.PyTreeCheckpointer().metadata(ckpt_dir)
  item = getattr(metadata, "item_metadata", metadata)  # A StepMetadata in newer orbax.
  tree = getattr(item, "tree", item)  # A TreeMetadata in newer orbax, a dict in older.
  for key in _PARAM_KEYS:
    if isinstance(tree, Mapping) and key in tree:
      return key, tree[key]
  raise CheckpointError(f"Orbax checkpoint {ckpt_dir} has no params under any of "
                        f"{list(_PARAM_KEYS)} (top-level keys: {sorted(tree)}).")


def orbax_shapes(ckpt_dir: str) -> tuple[str, dict[str, Shape]]:
  """(params key, `{t5x_path: shape}`) of an Orbax checkpoint, from metadata only."""
  key, tree = _orbax_params_metadata(ckpt_dir)
  flat = _flatten(tree)
  return key, {path: tuple(int(d) for d in meta.shape) for path, meta in flat.items()}


def orbax_restore(ckpt_dir: str, key: str, paths: list[str], *, param_dtype: Any,
                  shardings: Mapping[str, Any] | None) -> dict[str, Any]:
  """Restores the params of an Orbax checkpoint (only them: the optimizer state is skipped).

  With `shardings`, orbax reads each device's slice straight into a `jax.Array`; without,
  arrays come back as numpy on the host.

  Returns:
    A nested params dict in T5X layout.
  """
  import orbax.checkpoint as ocp  # Local: see above.
  from flax import traverse_util
  if shardings is None:
    args = {p: ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.dtype(param_dtype))
            for p in paths}
  else:
    args = {p: ocp.ArrayRestoreArgs(sharding=shardings[p], dtype=np.dtype(param_dtype))
            for p in paths}
  item = traverse_util.unflatten_dict({p: 0 for p in paths}, sep="/")
  restore_args = traverse_util.unflatten_dict(args, sep="/")
  restored = ocp.PyTreeCheckpointer().restore(ckpt_dir, args=ocp.args.PyTreeRestore(
      item={key: item}, restore_args={key: restore_args}, partial_restore=True))
  return restored[key]
