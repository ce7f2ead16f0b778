"""The layers' own contracts: dropout's rate, scale, determinism and sharding invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_jax.models.layers import dropout


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_and_scale(rate):
  x = jnp.ones((64, 129, 33))  # Odd last axis: the last 16-bit half of a word is dropped.
  y = np.asarray(dropout(x, rate, jax.random.PRNGKey(0)))
  kept = y != 0
  keep_prob = 1 - round(rate * 2**16) / 2**16
  np.testing.assert_allclose(y[kept], 1 / keep_prob, rtol=1e-6)
  n = kept.size  # Binomial: 5 standard deviations is far outside chance.
  assert abs(kept.mean() - keep_prob) < 5 * np.sqrt(keep_prob * (1 - keep_prob) / n)
  # Unbiased: the expectation of each entry is x.
  assert abs(y.mean() - 1) < 5 * np.sqrt((1 / keep_prob - 1) / n)


def test_dropout_masks_are_independent_along_the_last_axis():
  """Neighbouring entries come from the two halves of one word; they must not agree."""
  y = np.asarray(dropout(jnp.ones((4096, 2)), 0.5, jax.random.PRNGKey(1))) != 0
  both = (y[:, 0] & y[:, 1]).mean()
  assert abs(both - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 4096)


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
