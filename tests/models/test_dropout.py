"""Dropout: its hash is Threefry, its rate and scale are exact, its mask ignores sharding and
is shared along the length axis as in T5X."""

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_jax.models.dropout import dropout, mask_shape, threefry2x32, uniform16
from prompt_jax.models.layers import MlpBlock, MultiHeadAttention


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


def test_broadcast_dims_share_one_mask_along_the_axis():
  x = jnp.ones((4, 37, 65))
  y = np.asarray(dropout(x, 0.5, jax.random.PRNGKey(6), broadcast_dims=(-2,))) != 0
  np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))  # Same along axis 1.
  assert 0.3 < y[:, 0].mean() < 0.7 and len({r.tobytes() for r in y[:, 0]}) == 4
  assert mask_shape((4, 37, 65), (-2,)) == (4, 1, 65) == mask_shape((4, 37, 65), (1,))
  assert mask_shape((2, 3), ()) == (2, 3)


def _layer_rows(module, inputs, shared: bool):
  """Outputs of a layer whose L input rows are equal, with dropout (shared along L or not)."""
  m = module.clone(dropout_broadcast_length=shared)
  params = m.init(jax.random.PRNGKey(0), *inputs, deterministic=True)
  return np.asarray(m.apply(params, *inputs, deterministic=False,
                            rngs={"dropout": jax.random.PRNGKey(7)}))


@pytest.mark.parametrize("layer", ["mlp", "attention"])
def test_t5x_masks_are_shared_along_length_in_the_layers(layer):
  """Equal input rows give equal output rows iff each mask is shared along the length axis
  (attention: the weights' mask shared over the queries)."""
  x = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(1), (2, 1, 16)), (2, 9, 16))
  if layer == "mlp":
    module, inputs = MlpBlock(32, "gelu_new", True, 0.5), (x,)
  else:
    module, inputs = MultiHeadAttention(2, 8, 0.5), (x, x, jnp.zeros((1, 2, 9, 9)))
  shared = _layer_rows(module, inputs, True)
  np.testing.assert_allclose(shared, np.broadcast_to(shared[:, :1], shared.shape), atol=1e-6)
  full = _layer_rows(module, inputs, False)
  assert not np.allclose(full, np.broadcast_to(full[:, :1], full.shape), atol=1e-3)


def test_t5x_masks_are_the_default_and_stay_out_of_hf_configs():
  from prompt_jax.models import T5Config
  assert T5Config().dropout_broadcast_length
  assert "dropout_broadcast_length" not in T5Config().to_hf_dict()
  cfg = T5Config.from_hf_dict({"dropout_broadcast_length": False, "d_model": 64})
  assert cfg.dropout_broadcast_length and cfg.d_model == 64
