"""`load_pretrained`: one call from a checkpoint path to `(model, frozen params)`.

Formats, detected from the files present (see `detect_format`):
  t5x      a T5X legacy dir (msgpack `checkpoint` file + zarr dirs); local or gs://
  orbax    a T5X / flax Orbax dir (`_METADATA`); params under `target` or `params`
  hf       an HF dir: `config.json` + `model.safetensors` (or sharded with
           `model.safetensors.index.json`), `flax_model.msgpack`, or `pytorch_model.bin`
A parent dir holding exactly one `checkpoint_<step>` dir is accepted (the choice is logged).

Loading is loud: the checkpoint's tensors are compared with `jax.eval_shape` of the model's
`init` before anything is read, and one error names every missing, extra or mis-shaped
tensor. Nothing is ever initialised at random.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import jax
import jax.numpy as jnp

from prompt_jax.checkpoints import hf, t5x
from prompt_jax.checkpoints.infer import infer_t5x_config
from prompt_jax.checkpoints.sources import (CheckpointError, check_against_model,
                                            expected_shapes, materialize, resolve_shardings)
from prompt_jax.models.t5 import T5Transformer

logger = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
_LOOKED_FOR = (
    f"T5X legacy: a '{t5x.LEGACY_FILE}' msgpack file; "
    f"T5X Orbax: '{t5x.ORBAX_MARKER}'; "
    f"HF: '{hf.CONFIG}' with one of {list(hf.WEIGHT_FILES)}; "
    f"or a parent dir holding exactly one 'checkpoint_<step>' dir")

# None, one jax.sharding.Sharding, a pytree of them, or a callable model -> either.
Sharding = Any


def _detect_remote(path: str) -> tuple[str, str]:
  """Format detection for gs:// paths (T5X formats only)."""
  path = path.rstrip("/")
  if path.endswith(f"/{t5x.LEGACY_FILE}"):
    return "t5x", path.rsplit("/", 1)[0]
  if t5x.remote_exists(f"{path}/{t5x.LEGACY_FILE}"):
    return "t5x", path
  if t5x.remote_exists(f"{path}/{t5x.ORBAX_MARKER}"):
    return "orbax", path
  raise CheckpointError(f"No T5X checkpoint at {path}: looked for '{t5x.LEGACY_FILE}' and "
                        f"'{t5x.ORBAX_MARKER}'. Remote paths must name the checkpoint_<step> "
                        f"dir itself (HF checkpoints: download them first).")


def _detect_local_dir(path: str) -> tuple[str, str] | None:
  if os.path.isfile(os.path.join(path, t5x.LEGACY_FILE)):
    return "t5x", path
  if os.path.exists(os.path.join(path, t5x.ORBAX_MARKER)):
    return "orbax", path
  if os.path.isfile(os.path.join(path, hf.CONFIG)):
    if hf.weight_file(path) is None:
      raise CheckpointError(f"{path} has {hf.CONFIG} but none of the HF weight files "
                            f"{list(hf.WEIGHT_FILES)}.")
    return "hf", path
  return None


def detect_format(path: str | os.PathLike) -> tuple[str, str]:
  """Finds the checkpoint at `path`.

  Args:
    path: a checkpoint dir, the T5X `checkpoint` file itself, or a parent dir holding
      exactly one `checkpoint_<step>` dir; `gs://` for T5X formats.

  Returns:
    (format, checkpoint dir) with format one of 't5x', 'orbax', 'hf'.

  Raises:
    CheckpointError: nothing recognisable there (the message lists what was looked for),
      or several `checkpoint_<step>` dirs to choose from.
  """
  path = os.fspath(path)
  if path.startswith("gs://"):
    return _detect_remote(path)
  # Tensorstore rejects '.' and '..' in file paths: resolve them as the OS does.
  path = os.path.realpath(path)
  if os.path.isfile(path):
    if os.path.basename(path) == t5x.LEGACY_FILE:
      return "t5x", os.path.dirname(path)
    raise CheckpointError(f"{path} is a file; pass the checkpoint dir (looked for: "
                          f"{_LOOKED_FOR}).")
  if not os.path.isdir(path):
    raise CheckpointError(f"No such checkpoint dir: {path}")
  found = _detect_local_dir(path)
  if found is not None:
    return found
  steps = sorted((name for name in os.listdir(path) if _STEP_DIR.match(name)
                  and os.path.isdir(os.path.join(path, name))),
                 key=lambda name: int(_STEP_DIR.match(name).group(1)))
  if len(steps) > 1:
    raise CheckpointError(f"{path} holds several checkpoints {steps}; pass one of them.")
  if len(steps) == 1:
    found = _detect_local_dir(os.path.join(path, steps[0]))
    if found is not None:
      logger.warning("load_pretrained: %s holds one checkpoint; using %s (%s format).",
                     path, found[1], found[0])
      return found
  raise CheckpointError(f"No checkpoint found in {path} ({sorted(os.listdir(path))[:10]}). "
                        f"Looked for: {_LOOKED_FOR}.")


class _ShapeOnly:
  """A tensor known by its shape only (Orbax metadata), for the shape check."""

  def __init__(self, shape: tuple[int, ...], origin: str):
    self.shape, self.origin = shape, origin


def _load_orbax(ckpt_dir: str, sharding: Sharding, param_dtype: Any, overrides: dict
                ) -> tuple[T5Transformer, dict[str, Any]]:
  key, shapes = t5x.orbax_shapes(ckpt_dir)
  model = T5Transformer(infer_t5x_config(shapes, **overrides))
  expected = expected_shapes(model)
  sources = {path: _ShapeOnly(shape, f"{ckpt_dir}:{key}/{path}")
             for path, shape in shapes.items()}
  check_against_model(sources, expected, where=ckpt_dir)
  shardings = resolve_shardings(sharding, model, expected)
  params = t5x.orbax_restore(ckpt_dir, key, sorted(expected), param_dtype=param_dtype,
                             shardings=shardings)
  if shardings is None:
    params = jax.tree.map(jnp.asarray, params)
  return model, params


def load_pretrained(path: str | os.PathLike, *, sharding: Sharding = None,
                    param_dtype: Any = jnp.float32, **config_overrides: Any
                    ) -> tuple[T5Transformer, dict[str, Any]]:
  """Loads a pretrained T5 / mT5 checkpoint as `(model, frozen params)`.

  Args:
    path: a T5X legacy dir (or its `checkpoint` file, or a parent with exactly one
      `checkpoint_<step>` dir), a T5X Orbax dir, or an HF dir; `gs://` for T5X formats.
    sharding: None (host arrays), or a pytree of `jax.sharding.Sharding` matching the params
      (one `Sharding` for all leaves also works), or a callable `sharding(model)` returning
      one. With a sharding each device's slice is read on its own, so a checkpoint need not
      fit in one host's memory.
    param_dtype: dtype of the returned params; checkpoint arrays (e.g. bfloat16) are cast.
    **config_overrides: `T5Config` fields. For T5X (which stores no config) fields the shapes
      determine must agree with them; others (e.g. `relative_attention_max_distance`,
      default 128) are taken from here. For HF they override `config.json`.

  Returns:
    `(T5Transformer(config), params)`: params is a plain nested dict of arrays in T5X layout
    (`encoder/layers_0/attention/query/kernel`, ...), for `model.apply({"params": params},
    ...)`.

  Raises:
    CheckpointError: unknown dir, or missing / extra / mis-shaped tensors (all named, with
      expected and found shapes), or a damaged file (truncated / corrupt msgpack,
      safetensors, zarr metadata or chunks, Orbax files; the message names it), or a
      `pytorch_model.bin` that torch's weights-only loader refuses.
    ValueError: an override contradicts the checkpoint's shapes.
  """
  fmt, ckpt_dir = detect_format(path)
  logger.info("load_pretrained: %s checkpoint at %s.", fmt, ckpt_dir)
  if fmt == "orbax":
    return _load_orbax(ckpt_dir, sharding, param_dtype, config_overrides)
  unrecognized, conflicts = {}, []
  if fmt == "t5x":
    sources = t5x.legacy_sources(ckpt_dir)
    config = infer_t5x_config({p: s.shape for p, s in sources.items()}, **config_overrides)
  else:
    config, hf_ties_lm_head = hf.normalized_hf_config(ckpt_dir, **config_overrides)
    sources, unrecognized, conflicts = hf.map_hf_tensors(
        hf.raw_tensors(ckpt_dir), config, hf_ties_lm_head=hf_ties_lm_head)
  model = T5Transformer(config)
  expected = expected_shapes(model)
  check_against_model(sources, expected, where=ckpt_dir, unrecognized=unrecognized,
                      conflicts=conflicts)
  shardings = resolve_shardings(sharding, model, expected)
  return model, materialize(sources, param_dtype=param_dtype, shardings=shardings)
