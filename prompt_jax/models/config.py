"""T5 family configuration: one frozen dataclass, field names as in HF `T5Config`.

An HF `config.json` maps onto `T5Config` one to one (`T5Config.from_hf_dict`); T5X
checkpoints carry no config, so `prompt_jax.checkpoints` infers one from tensor shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_GATED = {"gated-gelu", "gated-gelu_new", "gated-silu", "gated-relu"}
_PLAIN = {"relu", "gelu", "gelu_new", "silu"}
# How we compute, not what the checkpoint is: never read from or written to HF config.json.
_NOT_HF = ("dtype", "remat", "dropout_broadcast_length")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture of a T5 encoder-decoder.

  Defaults are T5 1.0 Small. `dtype` is the activation dtype; parameters stay float32 and
  layer norms, softmax and the returned logits are computed in float32 whatever it is
  (with "bfloat16" the prompt stays a float32 master copy, cast for the forward pass, so
  its gradient and optimizer state are float32). `remat` recomputes each encoder and
  decoder layer's activations in the backward pass instead of keeping them (less memory,
  about one more forward pass of compute); neither changes the parameter tree.

  `dropout_broadcast_length` (default, as T5X's T5): every dropout mask is drawn once per
  example and feature and shared along the length axis (attention weights: per key, shared
  over the queries), except the encoder output's; False draws one per entry, as HF does.
  Same expected value, L times fewer random draws.
  """

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"
  tie_word_embeddings: bool = True
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  dtype: str = "float32"
  remat: bool = False
  dropout_broadcast_length: bool = True

  def __post_init__(self):
    if self.feed_forward_proj not in _GATED | _PLAIN:
      raise ValueError(
          f"feed_forward_proj={self.feed_forward_proj!r} is not supported; use one of "
          f"{sorted(_GATED | _PLAIN)} ('relu' for T5 1.0, 'gated-gelu' for T5 1.1 / mT5).")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r}: use 'float32' or 'bfloat16'.")
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers",
                 "num_decoder_layers", "num_heads", "relative_attention_num_buckets"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def activation(self) -> str:
    """Name of the MLP activation without the `gated-` prefix.

    As in HF, only 'gated-gelu' (T5 1.1 / mT5) means the tanh approximation ('gelu_new');
    a plain 'gelu' is the exact erf GELU.
    """
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new"
    return self.feed_forward_proj.removeprefix("gated-")

  @property
  def activation_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  def replace(self, **changes: Any) -> "T5Config":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], **overrides: Any) -> "T5Config":
    """Builds a config from an HF `config.json` dict; unknown HF keys are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    # HF's `dtype` is the stored weights' dtype (e.g. float16), not our activation dtype.
    kwargs = {k: v for k, v in hf.items() if k in names and k not in _NOT_HF}
    if kwargs.get("num_decoder_layers") is None:
      kwargs["num_decoder_layers"] = hf.get("num_layers", cls.num_layers)
    if "tie_word_embeddings" not in hf:
      kwargs["tie_word_embeddings"] = True  # HF's T5Config default.
    # transformers >= 5 always writes tie_word_embeddings=true and records T5 1.0's
    # decoder-output rescale as scale_decoder_outputs; its mT5 never rescales.
    if hf.get("model_type") == "mt5":
      kwargs["tie_word_embeddings"] = False
    elif "scale_decoder_outputs" in hf:
      kwargs["tie_word_embeddings"] = bool(hf["scale_decoder_outputs"])
    bad = set(overrides) - names
    if bad:
      raise TypeError(f"Unknown T5Config override(s) {sorted(bad)}; valid: {sorted(names)}.")
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf_dict(self) -> dict[str, Any]:
    """The HF `config.json` fields of this config (for writing HF-format checkpoints)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name not in _NOT_HF}
    out.update(model_type="t5", architectures=["T5ForConditionalGeneration"],
               is_encoder_decoder=True, is_gated_act=self.is_gated,
               dense_act_fn=self.activation)
    return out


# Standard sizes. T5 1.1 / mT5 use d_kv 64 and gated-GELU; T5 1.0 sizes below are its own.
T5_1_1_SIZES: dict[str, dict[str, int]] = {
    "small": dict(d_model=512, num_layers=8, num_decoder_layers=8, num_heads=6, d_ff=1024),
    "base": dict(d_model=768, num_layers=12, num_decoder_layers=12, num_heads=12, d_ff=2048),
    "large": dict(d_model=1024, num_layers=24, num_decoder_layers=24, num_heads=16, d_ff=2816),
    "xl": dict(d_model=2048, num_layers=24, num_decoder_layers=24, num_heads=32, d_ff=5120),
    "xxl": dict(d_model=4096, num_layers=24, num_decoder_layers=24, num_heads=64, d_ff=10240),
}


def t5_1_1_config(size: str, **overrides: Any) -> T5Config:
  """A T5 1.1 (or LM-adapted) config of a named size."""
  base = dict(T5_1_1_SIZES[size], d_kv=64, vocab_size=32128, feed_forward_proj="gated-gelu",
              tie_word_embeddings=False)
  base.update(overrides)
  return T5Config(**base)


def mt5_config(size: str, **overrides: Any) -> T5Config:
  """An mT5 config of a named size (T5 1.1 shapes, 250112-entry vocabulary)."""
  return t5_1_1_config(size, **{"vocab_size": 250112, **overrides})
