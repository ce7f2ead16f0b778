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
import os
import posixpath
from typing import Any, Mapping

import numpy as np

from prompt_jax.checkpoints.sources import (ArraySource, CheckpointError, Shape, TensorSource,
                                            TensorStoreSource, kvstore_location)

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
  # Tensorstore's file driver rejects '.' and '..' components; resolve them as the OS would.
  return {"driver": "file", "path": os.path.realpath(path)}


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


def _legacy_target(filename: str, data: bytes) -> Mapping[str, Any]:
  """Decodes a T5X msgpack `checkpoint` file to its params tree (`optimizer/target`)."""
  from flax import serialization  # msgpack decoding of flax's array extension types.
  try:
    state = serialization.msgpack_restore(data)
  except Exception as err:  # Damaged bytes fail in msgpack or in flax's array decoding.
    raise CheckpointError(
        f"T5X checkpoint file {filename} cannot be decoded ({len(data)} bytes; "
        f"{type(err).__name__}: {err}). It is truncated or corrupted (an interrupted copy?): "
        f"copy the checkpoint dir again from its source (nothing was loaded).") from err
  optimizer = state.get("optimizer") if isinstance(state, Mapping) else None
  if isinstance(optimizer, Mapping) and isinstance(optimizer.get("target"), Mapping):
    return optimizer["target"]
  if isinstance(state, Mapping) and isinstance(state.get("target"), Mapping):
    return state["target"]
  found = (f"top-level keys: {sorted(map(str, state))}" if isinstance(state, Mapping)
           else f"it decodes to a {type(state).__name__}")
  raise CheckpointError(f"{filename} has no optimizer/target ({found}): not a T5X "
                        f"checkpoint, or a damaged one (copy the checkpoint dir again from "
                        f"its source).")


def legacy_sources(ckpt_dir: str) -> dict[str, TensorSource]:
  """The params of a legacy T5X checkpoint dir as lazy sources, by T5X path.

  Args:
    ckpt_dir: the dir holding the msgpack `checkpoint` file (local or `gs://`).

  Returns:
    `{t5x_path: TensorSource}`: inline arrays in memory, zarr arrays unread.
  """
  filename = posixpath.join(str(ckpt_dir), LEGACY_FILE)
  target = _legacy_target(filename, read_bytes(filename))
  sources: dict[str, TensorSource] = {}
  for path, leaf in _flatten(target).items():
    if _is_spec(leaf):
      spec = rewrite_spec(leaf, ckpt_dir)
      sources[path] = TensorStoreSource(spec, origin=f"zarr {kvstore_location(spec['kvstore'])}",
                                        checkpoint=str(ckpt_dir))
    elif isinstance(leaf, (np.ndarray, np.generic)):
      sources[path] = ArraySource(np.asarray(leaf), origin=f"{filename} (inline)")
    else:
      raise CheckpointError(f"{filename}: {path} is neither an array nor a tensorstore "
                            f"spec ({type(leaf).__name__}).")
  return sources


def _orbax_damaged(ckpt_dir: str, reason: str) -> CheckpointError:
  return CheckpointError(
      f"Orbax checkpoint {ckpt_dir} is damaged or incomplete ({reason}): its {ORBAX_MARKER} "
      f"or array files cannot be read. Copy the checkpoint dir again from its source "
      f"(nothing was loaded).")


def _orbax_params_metadata(ckpt_dir: str) -> tuple[str, dict[str, Any]]:
  """(params key, nested metadata tree of the params) of an Orbax checkpoint."""
  import orbax.checkpoint as ocp  # Local: orbax is slow to import and only needed here.
  try:
    metadata = ocp.PyTreeCheckpointer().metadata(ckpt_dir)
  except Exception as err:  # Orbax surfaces damaged files as JSON, tensorstore, ... errors.
    raise _orbax_damaged(ckpt_dir, f"{type(err).__name__}: {err}") from err
  item = getattr(metadata, "item_metadata", metadata)  # A StepMetadata in newer orbax.
  tree = getattr(item, "tree", item)  # A TreeMetadata in newer orbax, a dict in older.
  if not isinstance(tree, Mapping):  # Orbax logs a warning and returns None when it fails.
    raise _orbax_damaged(ckpt_dir, "orbax could not read its metadata")
  for key in _PARAM_KEYS:
    if key in tree:
      return key, tree[key]
  raise CheckpointError(f"Orbax checkpoint {ckpt_dir} has no params under any of "
                        f"{list(_PARAM_KEYS)} (top-level keys: {sorted(map(str, tree))}).")


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
  try:
    restored = ocp.PyTreeCheckpointer().restore(ckpt_dir, args=ocp.args.PyTreeRestore(
        item={key: item}, restore_args={key: restore_args}, partial_restore=True))
  except Exception as err:  # See `_orbax_params_metadata`.
    raise _orbax_damaged(ckpt_dir, f"{type(err).__name__}: {err}") from err
  return restored[key]
