"""T5 building blocks: RMS norm, relative position bias, attention with a KV cache, MLP.

Shape letters (used in einsum strings and comments throughout the model):
  B batch, L / S query / key lengths, D d_model, H heads, K d_kv, F d_ff, V vocab,
  P prompt length, N relative-position buckets.

Every parameter carries logical axis names (T5X vocabulary) through
`nn.with_logical_partitioning`; `prompt_jax.train.partitioning` maps them onto a mesh.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.models.dropout import Dropout

Array = jax.Array
# Additive attention bias for masked positions. T5X uses -1e10: finite, so a fully masked row
# (a padded query) softmaxes to uniform instead of NaN.
_MASK_BIAS = -1e10


def _param(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...],
           axes: tuple[str, ...]) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class Kernel(nn.Module):
  """A bare weight matrix stored as `<name>/kernel` (the T5X parameter layout)."""
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self) -> Array:
    return _param(self, "kernel", self.init, self.shape, self.axes)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias; computed in float32."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    scale = scale.reshape((1,) * (x.ndim - 1) + scale.shape)  # Explicit rank: [..., D].
    return (x32 * jax.lax.rsqrt(var + self.epsilon) * scale).astype(self.dtype)


def relative_position_buckets(query_len: int, key_len: int, *, bidirectional: bool,
                              num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's bucketing of `key_pos - query_pos`, computed statically. Returns int32 [L, S].

  Half the buckets (per direction) are exact distances, the rest log-spaced up to
  `max_distance`; the arithmetic is float32 as in the reference implementations.
  """
  query = np.arange(query_len, dtype=np.int64)[:, None]
  key = np.arange(key_len, dtype=np.int64)[None, :]
  n = -(key - query)  # [L, S]
  ret = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int64) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  n_large = np.maximum(n, max_exact).astype(np.float32)  # Only used where n >= max_exact.
  ratio = np.log(n_large / np.float32(max_exact)) / np.float32(np.log(max_distance / max_exact))
  large = max_exact + (ratio * np.float32(num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  ret += np.where(is_small, n, large)
  return ret.astype(np.int32)


class RelativePositionBias(nn.Module):
  """One learned [H, N] table per stack, shared by all layers of that stack."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool

  @nn.compact
  def __call__(self, query_len: int, key_len: int) -> Array:
    """Returns the bias [1, H, L, S] for queries 0..L-1 and keys 0..S-1."""
    table = _param(self, "rel_embedding", nn.initializers.normal(1.0),
                   (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    buckets = relative_position_buckets(
        query_len, key_len, bidirectional=self.bidirectional,
        num_buckets=self.num_buckets, max_distance=self.max_distance)
    return jnp.take(table, jnp.asarray(buckets), axis=1)[None]  # [1, H, L, S]


class MultiHeadAttention(nn.Module):
  """T5 attention. No 1/sqrt(d_kv) scaling: T5 folds it into the query weights at init.

  With `decode=True` it keeps a KV cache in the `cache` collection (keys / values
  [B, S_max, H, K] and the next write index); the first call, with a full-length input, only
  allocates the cache. When decoding, `bias` is the full [., H, S_max, S_max] bias (relative
  positions + causal mask) and the rows of the current step are sliced out here.
  """
  num_heads: int
  d_kv: int
  dropout_rate: float
  dtype: Any = jnp.float32
  dropout_broadcast_length: bool = False  # Share the weights' mask over queries (T5X).

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array, *,
               deterministic: bool, decode: bool = False,
               cache_kv_inputs: bool = False) -> Array:
    """Attention of inputs_q [B, L, D] over inputs_kv [B, S, D] -> [B, L, D].

    `cache_kv_inputs` (cross-attention while decoding): inputs_kv (the encoder output) is
    the same at every step, so its keys and values are projected once, on the call that
    allocates the cache, and read from the cache afterwards.
    """
    d_model = inputs_q.shape[-1]
    hk = self.num_heads * self.d_kv
    # T5's initialisation: query scaled by (d_model * d_kv) ** -0.5, keys / values d_model ** -0.5.
    q_init = nn.initializers.normal((d_model * self.d_kv) ** -0.5)
    kv_init = nn.initializers.normal(d_model ** -0.5)
    out_init = nn.initializers.normal(hk ** -0.5)
    kernel = lambda name, init: Kernel((d_model, hk), ("embed", "joined_kv"), init,
                                       name=name)()

    def project(x, *weights):
      # One matmul per projection, as T5X does. Measured against one matmul over the
      # kernels stacked on a new axis (T5 1.1 Small prompt step, batch 8, inputs 128 + P 20,
      # CPU): the stacked form's output needed a layout transpose per call (535 vs 249
      # transposes in the compiled step), 527 vs 412 MiB of temporaries, and was slower.
      return [jnp.einsum("BLD,DJ->BLJ", x, w.astype(self.dtype)).reshape(
          *x.shape[:2], self.num_heads, self.d_kv) for w in weights]  # Each [B, L, H, K].

    cached = cache_kv_inputs and self.has_variable("cache", "projected_key")
    if cached:
      query, = project(inputs_q, kernel("query", q_init))
      key = self.get_variable("cache", "projected_key")
      value = self.get_variable("cache", "projected_value")
    elif inputs_q is inputs_kv:
      query, key, value = project(inputs_q, kernel("query", q_init), kernel("key", kv_init),
                                  kernel("value", kv_init))
    else:
      query, = project(inputs_q, kernel("query", q_init))
      key, value = project(inputs_kv, kernel("key", kv_init), kernel("value", kv_init))
    if cache_kv_inputs and not cached:
      self.put_variable("cache", "projected_key", key)
      self.put_variable("cache", "projected_value", value)
    if decode:
      key, value, bias = self._update_cache(key, value, bias)

    logits = jnp.einsum("BLHK,BSHK->BHLS", query, key).astype(jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0:
      shared = (-2,) if self.dropout_broadcast_length else ()  # [B, H, 1, S] mask.
      weights = Dropout(self.dropout_rate, shared)(weights, deterministic=False)
    context = jnp.einsum("BHLS,BSHK->BLHK", weights, value).reshape(*query.shape[:2], hk)
    w_out = Kernel((hk, d_model), ("joined_kv", "embed"), out_init, name="out")()
    return jnp.einsum("BLJ,JD->BLD", context, w_out.astype(self.dtype))

  def _update_cache(self, key: Array, value: Array, bias: Array):
    is_initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
      return key, value, bias
    step_len = key.shape[1]
    i = index.value
    cached_key.value = jax.lax.dynamic_update_slice_in_dim(cached_key.value, key, i, 1)
    cached_value.value = jax.lax.dynamic_update_slice_in_dim(cached_value.value, value, i, 1)
    index.value = i + step_len
    bias = jax.lax.dynamic_slice_in_dim(bias, i, step_len, axis=2)  # [., H, step, S_max]
    return cached_key.value, cached_value.value, bias


class MlpBlock(nn.Module):
  """T5 feed-forward: `wo(act(wi x))` (T5 1.0) or `wo(act(wi_0 x) * wi_1 x)` (gated)."""
  d_ff: int
  activation: str
  gated: bool
  dropout_rate: float
  dtype: Any = jnp.float32
  dropout_broadcast_length: bool = False  # Share the hidden mask along L (T5X).

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    d_model = x.shape[-1]
    act = _ACTIVATIONS[self.activation]
    names = ("wi_0", "wi_1") if self.gated else ("wi",)
    ws = [Kernel((d_model, self.d_ff), ("embed", "mlp"),
                 nn.initializers.normal(d_model ** -0.5), name=name)() for name in names]
    # Separate matmuls for wi_0 / wi_1 (see `MultiHeadAttention`'s `project` for why).
    hidden = [jnp.einsum("BLD,DF->BLF", x, w.astype(self.dtype)) for w in ws]
    # The FFN neurons' activations (post-nonlinearity, before the gate's product), recorded
    # only when the caller makes `intermediates` mutable (neuron-overlap transferability).
    self.sow("intermediates", "ffn_activation", act(hidden[0]))
    h = act(hidden[0]) * hidden[1] if self.gated else act(hidden[0])
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    if not deterministic and self.dropout_rate > 0:
      shared = (-2,) if self.dropout_broadcast_length else ()  # [B, 1, F] mask.
      h = Dropout(self.dropout_rate, shared)(h, deterministic=False)
    w_out = Kernel((self.d_ff, d_model), ("mlp", "embed"),
                   nn.initializers.normal(self.d_ff ** -0.5), name="wo")()
    return jnp.einsum("BLF,FD->BLD", h, w_out.astype(self.dtype))


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # Exact, as HF's "gelu".
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),  # T5 1.1's gated-gelu.
    "silu": jax.nn.silu,
}


def attention_bias_from_mask(mask: Array) -> Array:
  """[B, 1, L, S] boolean mask -> additive float32 bias."""
  return jnp.where(mask, 0.0, _MASK_BIAS).astype(jnp.float32)
