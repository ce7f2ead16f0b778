"""The combine step: prefix and suffix-before-EOS placements and their masks."""

import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.prompts import combine

TOKENS = np.array([[5, 6, 7, 1, 0, 0], [3, 1, 0, 0, 0, 0], [4, 4, 4, 4, 4, 4]], np.int32)
# Embeddings that encode (row, position) so every move is visible: value = 10 * row + pos.
EMB = (10.0 * np.arange(3)[:, None] + np.arange(6)[None, :])[..., None].astype(np.float32)
PROMPT = np.array([[-1.0], [-2.0]], np.float32)  # [P=2, D=1]


def test_prefix_prepends_prompt_and_extends_mask():
  x, mask = combine.prefix(PROMPT, EMB, TOKENS > 0)
  assert x.shape == (3, 8, 1) and mask.shape == (3, 8)
  np.testing.assert_array_equal(x[:, :2, 0], [[-1, -2]] * 3)
  np.testing.assert_array_equal(x[:, 2:], EMB)
  np.testing.assert_array_equal(mask[:, :2], True)
  np.testing.assert_array_equal(mask[:, 2:], TOKENS > 0)


def test_suffix_before_eos_layout():
  x, mask = combine.suffix_before_eos(PROMPT, EMB, TOKENS, TOKENS > 0, eos_id=1)
  # Row 0: tokens 5 6 7 (pos 0..2), prompt, EOS (pos 3), padding.
  np.testing.assert_array_equal(x[0, :6, 0], [0, 1, 2, -1, -2, 3])
  np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 1, 1, 0, 0])
  # Row 1: token 3, prompt, EOS.
  np.testing.assert_array_equal(x[1, :4, 0], [10, -1, -2, 11])
  np.testing.assert_array_equal(mask[1], [1, 1, 1, 1, 0, 0, 0, 0])
  # Row 2 has no EOS and no padding: the prompt goes after the last token.
  np.testing.assert_array_equal(x[2, :, 0], [20, 21, 22, 23, 24, 25, -1, -2])
  np.testing.assert_array_equal(mask[2], True)


def test_per_example_prompts():
  per_example = np.stack([PROMPT, PROMPT * 10, PROMPT * 100])  # [B, P, D]
  x, _ = combine.prefix(per_example, EMB, TOKENS > 0)
  np.testing.assert_array_equal(x[:, 0, 0], [-1, -10, -100])


def test_bad_placement_and_shape():
  with pytest.raises(ValueError, match="placement"):
    combine.combine("middle", PROMPT, EMB, TOKENS, TOKENS > 0)
  with pytest.raises(ValueError, match=r"\[P, D\]"):
    combine.prefix(jnp.zeros((2, 2, 1)), EMB, TOKENS > 0)
