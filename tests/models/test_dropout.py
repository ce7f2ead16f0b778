"""Dropout: its hash is Threefry, its rate and scale are exact, its mask ignores sharding."""

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_jax.models.dropout import dropout, threefry2x32, uniform16


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_and_scale(rate):
  x = jnp.ones((64, 129, 33))  # 33 = 8 hashes + 1: the last hash's 3 spare draws go unused.
  y = np.asarray(dropout(x, rate, jax.random.PRNGKey(0)))
  kept = y != 0
  keep_prob = 1 - round(rate * 2**16) / 2**16
  np.testing.assert_allclose(y[kept], 1 / keep_prob, rtol=1e-6)
  n = kept.size  # Binomial: 5 standard deviations is far outside chance.
  assert abs(kept.mean() - keep_prob) < 5 * np.sqrt(keep_prob * (1 - keep_prob) / n)
  # Unbiased: the expectation of each entry is x.
  assert abs(y.mean() - 1) < 5 * np.sqrt((1 / keep_prob - 1) / n)


def test_unrolled_threefry_equals_jax_threefry():
  rng = np.random.default_rng(0)
  key = rng.integers(0, 2**32, 2, dtype=np.uint32)
  x0, x1 = (rng.integers(0, 2**32, 1000, dtype=np.uint32) for _ in range(2))
  y0, y1 = jax.jit(threefry2x32)((key[0], key[1]), x0, x1)
  expected = jex_random.threefry_2x32(key, np.concatenate([x0, x1]))  # Halves are x0, x1.
  np.testing.assert_array_equal(np.concatenate([y0, y1]), expected)


def test_uniform16_is_uniform_and_unique_per_position():
  u = np.asarray(uniform16(jax.random.PRNGKey(5), (3, 50, 1001)), np.int64)
  assert u.shape == (3, 50, 1001)
  counts = np.bincount(u.ravel() >> 12, minlength=16)  # 16 bins of 4096 values.
  expected = u.size / 16
  assert ((counts - expected) ** 2 / expected).sum() < 60  # Chi-square, 15 dof: p ~ 1e-7.
  # No two rows or positions reuse a hash: repeated rows would show as equal slices.
  flat = u.reshape(-1, 1001)
  assert len({row.tobytes() for row in flat}) == flat.shape[0]


def test_dropout_masks_are_independent_within_one_hash():
  """Four neighbouring entries share a hash (two words, two halves each); pairs must not agree."""
  y = np.asarray(dropout(jnp.ones((8192, 4)), 0.5, jax.random.PRNGKey(1))) != 0
  for i, j in ((0, 1), (1, 2), (0, 3)):
    both = (y[:, i] & y[:, j]).mean()
    assert abs(both - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 8192), (i, j)


def test_dropout_is_deterministic_per_key_and_exact_at_the_ends():
  x = jnp.arange(1.0, 1001.0).reshape(10, 100)
  a, b = dropout(x, 0.3, jax.random.PRNGKey(2)), dropout(x, 0.3, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, dropout(x, 0.3, jax.random.PRNGKey(3)))
  np.testing.assert_array_equal(dropout(x, 0.0, jax.random.PRNGKey(2)), x)
  np.testing.assert_array_equal(dropout(x, 1.0, jax.random.PRNGKey(2)), jnp.zeros_like(x))
  with pytest.raises(ValueError, match="rate must be in"):
    dropout(x, 1.5, jax.random.PRNGKey(2))


def test_dropout_mask_does_not_depend_on_sharding():
  devices = np.array(jax.devices())
  if devices.size < 2:
    pytest.skip("needs several devices (XLA_FLAGS=--xla_force_host_platform_device_count)")
  mesh = Mesh(devices[:2], ("model",))
  x = jnp.ones((6, 16))
  fn = jax.jit(lambda v: dropout(v, 0.25, jax.random.PRNGKey(4)))
  single = fn(x)
  sharded = fn(jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "model"))))
  np.testing.assert_array_equal(single, sharded)
