"""Transferability metrics on constructed cases, and on a tiny model."""

import numpy as np
import pytest

from prompt_jax.prompts import similarity
from tests.tiny import frozen_params, tiny_config


def test_cosine_and_e_avg_against_hand_computation():
  rng = np.random.default_rng(0)
  p, q = rng.normal(size=(4, 6)), rng.normal(size=(3, 6))
  a, b = p.mean(0), q.mean(0)
  assert similarity.e_avg(p, q) == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  assert similarity.e_avg(p, p) == pytest.approx(1.0)
  assert similarity.cosine([1.0, 0.0], [0.0, 2.0]) == 0.0
  assert similarity.cosine([1.0, 1.0], [-3.0, -3.0]) == pytest.approx(-1.0)


def test_neuron_overlap_on_a_hand_built_activation_pattern():
  s = np.array([[1.0, 0.5, -1.0, 0.0],    # layer 0: active {0, 1}
                [-1.0, -1.0, -1.0, -1.0]])  # layer 1: none active
  t = np.array([[2.0, -0.1, 3.0, 0.0],    # layer 0: active {0, 2} -> 1 / 3
                [-2.0, -1.0, -5.0, -1.0]])  # layer 1: none on both sides -> 1
  assert similarity.neuron_overlap(s, t) == pytest.approx((1 / 3 + 1.0) / 2)
  t2 = t.copy()
  t2[1, 3] = 1.0  # layer 1: {} vs {3} -> 0
  assert similarity.neuron_overlap(s, t2) == pytest.approx((1 / 3 + 0.0) / 2)
  with pytest.raises(ValueError, match="layers, F"):
    similarity.neuron_overlap(s, t[:, :2])


def test_pooling_over_tokens_or_prompt_positions():
  encoded = np.arange(2 * 4 * 1, dtype=np.float64).reshape(2, 4, 1)  # [B=2, P+L=4, D=1]
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_allclose(similarity.pool_states(encoded, mask, 2, "tokens")[:, 0],
                             [1.0, 5.5])
  np.testing.assert_allclose(similarity.pool_states(encoded, mask, 2, "prompt")[:, 0],
                             [0.5, 4.5])
  with pytest.raises(ValueError, match="pooling"):
    similarity.pool_states(encoded, mask, 2, "mean")


def test_matrices_on_a_tiny_model_identical_prompts_score_one_in_order():
  cfg = tiny_config()
  frozen = frozen_params(cfg)
  rng = np.random.default_rng(1)
  pa, pb = (rng.normal(size=(3, cfg.d_model)).astype(np.float32) for _ in range(2))
  tokens = rng.integers(2, cfg.vocab_size, (5, 6)).astype(np.int32)
  tokens[0, 4:] = 0  # Some padding.
  mats = similarity.matrices(cfg, frozen, {"a": pa, "b": pb},
                             {"ta": (pa, tokens), "tb": (pb, tokens[:3])}, batch_size=2)
  for metric in ("panda", "e_avg", "on"):
    m = mats[metric]
    assert m.shape == (2, 2)
    assert m[0, 0] == pytest.approx(1.0) and m[1, 1] == pytest.approx(1.0)
  assert mats["e_avg"][0, 1] == pytest.approx(similarity.e_avg(pa, pb))
  assert mats["e_avg"][0, 1] == pytest.approx(mats["e_avg"][1, 0])  # Input-independent.
  assert mats["panda"][0, 1] < 1.0 - 1e-6
  # The pooled encoder states are a real forward pass: prompt-only pooling differs.
  by_prompt = similarity.matrices(cfg, frozen, {"a": pa}, {"tb": (pb, tokens)},
                                  pooling="prompt", batch_size=5)["panda"]
  by_tokens = similarity.matrices(cfg, frozen, {"a": pa}, {"tb": (pb, tokens)},
                                  batch_size=5)["panda"]
  assert by_prompt[0, 0] != pytest.approx(by_tokens[0, 0])
