"""Dropout whose random bits are cheap on CPU and independent of sharding.

What dropout costs on a CPU step is almost all random-bit generation. `jax.random` lowers
Threefry on CPU as a rolled loop (to keep compiles short), so each dropout site becomes a
five-trip `while` whose four uint32 intermediates go through memory on every trip. Here the
same counter-based hash, Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011), is written out round by round, so XLA fuses the whole
hash, the threshold and the select into the kernels around them; and each hash gives two
32-bit words, i.e. four 16-bit uniforms, so a mask of n entries costs n / 4 hashes.

The bits of entry i depend only on the key and i's position in the full array (the counter is
the global row-major index), so the mask is the same however the array is sharded and
whichever device computes it.

`broadcast_dims` (as in `flax.linen.Dropout`) draws one mask entry per position of the other
axes and shares it along these: T5X's T5 shares every mask along the length axis, so a
[B, L, D] activation needs B * D draws instead of B * L * D.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Threefry-2x32 rotation distances (the two alternating groups of four) and key-schedule parity.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
_BITS = 16  # Bits per uniform draw: the drop probability is quantised to k / 2**16.
_LEVELS = 1 << _BITS


def threefry2x32(key: tuple[Array, Array], x0: Array, x1: Array) -> tuple[Array, Array]:
  """The Threefry-2x32 hash (20 rounds) of counter pairs (x0, x1) under a two-word key.

  Equal, word for word, to `jax.extend.random.threefry_2x32`; unrolled so XLA can fuse it.
  """
  k0, k1 = (jnp.asarray(k, jnp.uint32) for k in key)
  ks = (k0, k1, k0 ^ k1 ^ np.uint32(_PARITY))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for group in range(5):
    for r in _ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
      x1 = x1 ^ x0
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
  return x0, x1


def _global_index(shape: tuple[int, ...]) -> Array:
  """uint32 row-major index of every position of `shape` (< 2**32 positions)."""
  if int(np.prod(shape)) >= 2**32:
    raise ValueError(f"dropout over {shape} needs more than 2**32 counters.")
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    stride *= shape[axis]
  return index


def uniform16(key: Array, shape: tuple[int, ...]) -> Array:
  """Uniform uint16 draws of `shape`, four per hash, laid out along the last axis."""
  last = shape[-1] if shape else 1
  lead = tuple(shape[:-1])
  words = jax.random.bits(key, (2,), jnp.uint32)  # Any PRNG impl -> a Threefry key pair.
  counters = _global_index((*lead, (last + 3) // 4, 2))
  y0, y1 = threefry2x32((words[0], words[1]), counters[..., 0], counters[..., 1])
  halves = jax.lax.bitcast_convert_type(jnp.stack([y0, y1], axis=-1), jnp.uint16)
  return halves.reshape(*lead, -1)[..., :last].reshape(shape)  # [..., 4 * hashes] -> shape


def mask_shape(shape: tuple[int, ...], broadcast_dims: Sequence[int]) -> tuple[int, ...]:
  """`shape` with the `broadcast_dims` axes (negative counts from the end) set to 1."""
  dims = {d % len(shape) for d in broadcast_dims} if shape else set()
  return tuple(1 if axis in dims else n for axis, n in enumerate(shape))


def dropout(x: Array, rate: float, rng: Array, broadcast_dims: Sequence[int] = ()) -> Array:
  """Inverted dropout: zeroes each entry with probability `rate`, scales the rest up.

  The keep mask is exact Bernoulli(1 - k / 2**16), k = round(rate * 2**16) (0.1 -> 0.1000061),
  and kept entries are divided by that exact keep probability, so E[dropout(x)] = x. Along
  `broadcast_dims` the mask is shared (one draw for the whole axis).
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"dropout rate must be in [0, 1], got {rate}.")
  k = round(rate * _LEVELS)
  if k == 0:
    return x
  if k == _LEVELS:
    return jnp.zeros_like(x)
  keep = uniform16(rng, mask_shape(x.shape, broadcast_dims)) >= np.uint16(k)
  keep = jnp.broadcast_to(keep, x.shape)
  scale = jnp.asarray(_LEVELS / (_LEVELS - k), x.dtype)
  return jax.lax.select(keep, x * scale, jnp.zeros_like(x))


class Dropout(nn.Module):
  """`dropout` with its key from the module's "dropout" RNG stream (as `nn.Dropout`)."""
  rate: float
  broadcast_dims: Sequence[int] = ()

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if deterministic or self.rate == 0:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"), self.broadcast_dims)
