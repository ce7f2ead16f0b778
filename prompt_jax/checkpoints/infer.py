"""The architecture of a T5X checkpoint, inferred from its tensor shapes.

T5X checkpoints carry no config. Everything that shapes a tensor is read off the tensors;
what does not (the activation beyond gated / not gated, `relative_attention_max_distance`,
dropout, epsilon, activation dtype) comes from overrides or `T5Config`'s defaults. An override
that contradicts a shape is an error naming both, never a silent winner.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from prompt_jax.checkpoints.sources import CheckpointError, Shape
from prompt_jax.models.config import T5Config

_EMBEDDING = "token_embedder/embedding"
_RELPOS = "encoder/relpos_bias/rel_embedding"
_QUERY = "encoder/layers_0/attention/query/kernel"
_LOGITS = "decoder/logits_dense/kernel"


def _need(shapes: Mapping[str, Shape], path: str, rank: int) -> Shape:
  if path not in shapes:
    raise CheckpointError(
        f"Cannot infer the architecture: the checkpoint has no {path!r} (found e.g. "
        f"{sorted(shapes)[:5]}). Is this a T5X T5 encoder-decoder checkpoint?")
  shape = tuple(shapes[path])
  if len(shape) != rank:
    raise CheckpointError(f"{path} has shape {shape}; expected a rank-{rank} tensor.")
  return shape


def _count_layers(shapes: Mapping[str, Shape], stack: str) -> int:
  pattern = re.compile(rf"^{stack}/layers_(\d+)/")
  indices = {int(m.group(1)) for path in shapes if (m := pattern.match(path))}
  return max(indices) + 1 if indices else 0


def _inferred_fields(shapes: Mapping[str, Shape]) -> dict[str, tuple[Any, str]]:
  """`{field: (value, evidence)}` for every config field the shapes determine."""
  vocab, d_model = _need(shapes, _EMBEDDING, 2)
  heads, buckets = _need(shapes, _RELPOS, 2)
  _, joined_kv = _need(shapes, _QUERY, 2)
  if joined_kv % heads:
    raise CheckpointError(f"{_QUERY} has {joined_kv} columns, not a multiple of the "
                          f"{heads} heads of {_RELPOS} {shapes[_RELPOS]}.")
  gated = "encoder/layers_0/mlp/wi_0/kernel" in shapes
  wi = "encoder/layers_0/mlp/wi_0/kernel" if gated else "encoder/layers_0/mlp/wi/kernel"
  _, d_ff = _need(shapes, wi, 2)
  emb = f"{_EMBEDDING} {tuple(shapes[_EMBEDDING])}"
  rel = f"{_RELPOS} {tuple(shapes[_RELPOS])}"
  tied = _LOGITS not in shapes
  return {
      "vocab_size": (vocab, emb),
      "d_model": (d_model, emb),
      "num_heads": (heads, rel),
      "relative_attention_num_buckets": (buckets, rel),
      "d_kv": (joined_kv // heads, f"{_QUERY} {tuple(shapes[_QUERY])} / {heads} heads"),
      "d_ff": (d_ff, f"{wi} {tuple(shapes[wi])}"),
      "num_layers": (_count_layers(shapes, "encoder"), "the encoder/layers_<i> present"),
      "num_decoder_layers": (_count_layers(shapes, "decoder"), "the decoder/layers_<i> present"),
      "tie_word_embeddings": (tied, f"{_LOGITS} {'absent' if tied else 'present'}"),
  }


def infer_t5x_config(shapes: Mapping[str, Shape], **overrides: Any) -> T5Config:
  """Builds the `T5Config` of a T5X checkpoint from its parameter shapes.

  Args:
    shapes: `{t5x_path: shape}` of the checkpoint's parameters.
    **overrides: `T5Config` fields. Fields the shapes determine may be passed only with the
      inferred value; `feed_forward_proj` may name any activation of the inferred kind
      (gated: `wi_0` / `wi_1` present, default 'gated-gelu'; else `wi`, default 'relu').

  Returns:
    The config.

  Raises:
    ValueError: an override contradicts the shapes (the message names both).
    TypeError: an override names no `T5Config` field.
    CheckpointError: the shapes are not those of a T5 encoder-decoder.
  """
  names = {f.name for f in dataclasses.fields(T5Config)}
  unknown = sorted(set(overrides) - names)
  if unknown:
    raise TypeError(f"Unknown T5Config override(s) {unknown}; valid: {sorted(names)}.")
  fields = _inferred_fields(shapes)
  conflicts = [f"{name}={overrides[name]!r} (override) contradicts {name}={value!r} inferred "
               f"from {evidence}" for name, (value, evidence) in fields.items()
               if name in overrides and overrides[name] != value]
  gated = "encoder/layers_0/mlp/wi_0/kernel" in shapes
  proj = overrides.get("feed_forward_proj", "gated-gelu" if gated else "relu")
  if str(proj).startswith("gated-") != gated:
    conflicts.append(
        f"feed_forward_proj={proj!r} (override) contradicts the checkpoint's "
        f"{'gated MLP (mlp/wi_0, mlp/wi_1)' if gated else 'plain MLP (mlp/wi)'}")
  if conflicts:
    raise ValueError("Config override(s) contradict the checkpoint's shapes:\n  "
                     + "\n  ".join(conflicts))
  kwargs = {name: value for name, (value, _) in fields.items()}
  kwargs.update(overrides, feed_forward_proj=proj)
  return T5Config(**kwargs)
