"""The T5 encoder-decoder (T5 1.0, 1.1, LM-adapted, mT5) in Flax linen.

Shape letters: B batch, L encoder length, T decoder length, D d_model, H heads, K d_kv,
F d_ff, V vocab, P prompt length.

Parameter tree (T5X layout):
  token_embedder/embedding                                  [V, D]
  encoder/relpos_bias/rel_embedding                         [H, N]
  encoder/layers_<i>/{pre_attention_layer_norm, pre_mlp_layer_norm}/scale
  encoder/layers_<i>/attention/{query,key,value,out}/kernel [D, H*K] / [H*K, D]
  encoder/layers_<i>/mlp/{wi | wi_0, wi_1, wo}/kernel       [D, F] / [F, D]
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_<i>/{pre_self_attention_layer_norm, pre_cross_attention_layer_norm,
                      pre_mlp_layer_norm}/scale
  decoder/layers_<i>/{self_attention, encoder_decoder_attention}/{query,key,value,out}/kernel
  decoder/layers_<i>/mlp/...
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                               [D, V]  (untied models only)
  prompt/...                                                (when a prompt module is set)

The prompt seam: `encode` embeds the tokens, then hands `(embedded, tokens, mask)` to the
prompt module, which returns the combined inputs and their mask (e.g. [B, P+L, D] and
[B, P+L]) before input dropout. Both the encoder self-attention mask and the decoder's
cross-attention mask come from that returned mask, so every prompt method is a prompt
module, never a different T5.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax.models.config import T5Config
from prompt_jax.models.dropout import Dropout
from prompt_jax.models.layers import (Kernel, MlpBlock, MultiHeadAttention,
                                      RelativePositionBias, RMSNorm, _param,
                                      attention_bias_from_mask)

Array = jax.Array
EMBED_AXES = ("batch", "length", "embed")


class PromptSeam(Protocol):
  """What a prompt module provides: combine embedded inputs with a prompt."""

  def __call__(self, embedded: Array, tokens: Array, mask: Array, *,
               task_ids: Array | None, deterministic: bool) -> tuple[Array, Array]:
    """[B, L, D], [B, L], [B, L] -> combined [B, L', D] and its mask [B, L']."""


class Embed(nn.Module):
  """Token embedding [V, D]; `attend` is the tied output projection of T5 1.0."""
  vocab_size: int
  d_model: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = _param(self, "embedding", nn.initializers.normal(1.0),
                            (self.vocab_size, self.d_model), ("vocab", "embed"))

  def __call__(self, tokens: Array) -> Array:
    # No sqrt(d_model) scaling: soft prompts live in this raw embedding space.
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    return jnp.einsum("BTD,VD->BTV", x, self.embedding.astype(self.dtype))


def _dropout(x: Array, cfg: T5Config, deterministic: bool, *, full: bool = False) -> Array:
  """Dropout of a [B, L, D] activation; its mask shared along L unless `full` (see T5Config)."""
  if deterministic or cfg.dropout_rate == 0:
    return x
  shared = cfg.dropout_broadcast_length and not full
  return Dropout(cfg.dropout_rate, (-2,) if shared else ())(x, deterministic=False)


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    cfg = self.config
    dt = cfg.activation_dtype
    h = RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dt,
                           cfg.dropout_broadcast_length, name="attention")(
        h, h, bias, deterministic=deterministic)
    x = x + _dropout(h, cfg, deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(x)
    h = MlpBlock(cfg.d_ff, cfg.activation, cfg.is_gated, cfg.dropout_rate, dt,
                 cfg.dropout_broadcast_length, name="mlp")(
        h, deterministic=deterministic)
    x = x + _dropout(h, cfg, deterministic)
    return nn.with_logical_constraint(x, EMBED_AXES)


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, y: Array, encoded: Array, self_bias: Array, cross_bias: Array,
               deterministic: bool, decode: bool) -> Array:
    cfg = self.config
    dt = cfg.activation_dtype
    attn = lambda name: MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dt,
                                           cfg.dropout_broadcast_length, name=name)
    h = RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_self_attention_layer_norm")(y)
    h = attn("self_attention")(h, h, self_bias, deterministic=deterministic, decode=decode)
    y = y + _dropout(h, cfg, deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_cross_attention_layer_norm")(y)
    h = attn("encoder_decoder_attention")(h, encoded, cross_bias, deterministic=deterministic,
                                          cache_kv_inputs=decode)
    y = y + _dropout(h, cfg, deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(y)
    h = MlpBlock(cfg.d_ff, cfg.activation, cfg.is_gated, cfg.dropout_rate, dt,
                 cfg.dropout_broadcast_length, name="mlp")(
        h, deterministic=deterministic)
    y = y + _dropout(h, cfg, deterministic)
    return nn.with_logical_constraint(y, EMBED_AXES)


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, *, deterministic: bool) -> Array:
    """Embedded (and prompted) inputs [B, L, D] with mask [B, L] -> encoded [B, L, D]."""
    cfg = self.config
    length = x.shape[1]
    relpos = RelativePositionBias(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  bidirectional=True, name="relpos_bias")(length, length)
    bias = attention_bias_from_mask(mask[:, None, :, None] & mask[:, None, None, :]) + relpos
    x = _dropout(nn.with_logical_constraint(x, EMBED_AXES), cfg, deterministic)
    # nn.remat keeps the parameter names (layers_<i>/...); `deterministic` is static.
    layer = nn.remat(EncoderLayer, static_argnums=(3,)) if cfg.remat else EncoderLayer
    for i in range(cfg.num_layers):
      x = layer(cfg, name=f"layers_{i}")(x, bias, deterministic)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(x)
    return _dropout(x, cfg, deterministic, full=True)  # T5X: the one unshared mask.


class Decoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, y: Array, encoded: Array, encoder_mask: Array,
               shared_embedding: Embed, *, deterministic: bool, decode: bool,
               max_decode_length: int | None) -> Array:
    """Embedded decoder inputs [B, T, D] -> float32 logits [B, T, V]."""
    cfg = self.config
    # When decoding with a cache, queries are the current step only, but the bias covers the
    # whole cache; attention slices the current rows (see MultiHeadAttention).
    length = max_decode_length if decode else y.shape[1]
    relpos = RelativePositionBias(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  bidirectional=False, name="relpos_bias")(length, length)
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
    self_bias = attention_bias_from_mask(causal) + relpos  # [1, H, T, T]
    cross_bias = attention_bias_from_mask(
        jnp.broadcast_to(encoder_mask[:, None, None, :],
                         (encoder_mask.shape[0], 1, y.shape[1], encoder_mask.shape[1])))
    y = _dropout(nn.with_logical_constraint(y, EMBED_AXES), cfg, deterministic)
    remat = cfg.remat and not decode  # Cached decoding has no backward pass.
    layer = nn.remat(DecoderLayer, static_argnums=(5, 6)) if remat else DecoderLayer
    for i in range(cfg.num_decoder_layers):
      y = layer(cfg, name=f"layers_{i}")(y, encoded, self_bias, cross_bias, deterministic,
                                         decode)
    y = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="decoder_norm")(y)
    y = _dropout(y, cfg, deterministic)
    if cfg.tie_word_embeddings:
      # T5 1.0 rescales before the tied projection.
      logits = shared_embedding.attend(y * (cfg.d_model ** -0.5))
    else:
      w = Kernel((cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                 nn.initializers.normal(cfg.d_model ** -0.5), name="logits_dense")()
      logits = jnp.einsum("BTD,DV->BTV", y, w.astype(y.dtype))
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return logits.astype(jnp.float32)


class T5Transformer(nn.Module):
  """T5 with a prompt seam at the encoder input.

  Attributes:
    config: the architecture.
    prompt: a module following `PromptSeam`, or None for the plain model. Its parameters live
      under `prompt/` in the tree.
  """
  config: T5Config
  prompt: nn.Module | None = None

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)

  def encode(self, encoder_input_tokens: Array, *, enable_dropout: bool = False,
             task_ids: Array | None = None) -> tuple[Array, Array]:
    """Int tokens [B, L] (0 = padding) -> encoded [B, L', D] and encoder mask [B, L'].

    L' = L plus whatever the prompt module adds.
    """
    if encoder_input_tokens.ndim != 2:
      raise ValueError(f"encoder_input_tokens must be [B, L], got {encoder_input_tokens.shape}.")
    deterministic = not enable_dropout
    x = self.token_embedder(encoder_input_tokens)  # [B, L, D]
    mask = encoder_input_tokens > 0  # [B, L]
    if self.prompt is not None:
      x, mask = self.prompt(x, encoder_input_tokens, mask, task_ids=task_ids,
                            deterministic=deterministic)  # [B, P+L, D], [B, P+L]
    return self.encoder(x, mask, deterministic=deterministic), mask

  def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array, *,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: int | None = None) -> Array:
    """Encoded [B, L', D], mask [B, L'], decoder tokens [B, T] -> float32 logits [B, T, V].

    With `decode=True` (KV cache in the `cache` collection) pass `max_decode_length`; the
    first call with [B, max_decode_length] tokens allocates the cache, later calls feed
    [B, 1] tokens one step at a time.
    """
    if decode and max_decode_length is None:
      raise ValueError("decode=True needs max_decode_length (the cache length).")
    y = self.token_embedder(decoder_input_tokens)  # [B, T, D]
    return self.decoder(y, encoded, encoder_mask, self.token_embedder,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, *,
               enable_dropout: bool = False, task_ids: Array | None = None) -> Array:
    """Teacher-forced logits: tokens [B, L] and [B, T] -> float32 logits [B, T, V]."""
    encoded, mask = self.encode(encoder_input_tokens, enable_dropout=enable_dropout,
                                task_ids=task_ids)
    return self.decode(encoded, mask, decoder_input_tokens, enable_dropout=enable_dropout)
