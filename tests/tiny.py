"""Shared tiny fixtures for tests: unequal sizes so a transpose cannot hide."""

from __future__ import annotations

from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.models import T5Config, T5Transformer

VOCAB = 40


def tiny_config(**overrides) -> T5Config:
  base = dict(vocab_size=VOCAB, d_model=8, d_kv=3, d_ff=16, num_layers=2, num_decoder_layers=3,
              num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
  base.update(overrides)
  return T5Config(**base)


def frozen_params(config: T5Config, seed: int = 0) -> dict:
  """Random 'pretrained' weights of the plain model (no prompt)."""
  tokens = jnp.ones((1, 1), jnp.int32)
  return nn.unbox(T5Transformer(config).init(jax.random.PRNGKey(seed), tokens, tokens))["params"]


def randomize_hf_t5(model) -> None:
  """Fills an HF PyTorch T5 with random weights in place, every tensor, layer norms included.

  Fan-in scaled like T5's init, so logits stay O(1-10) and float32 noise below 1e-5.
  """
  import torch  # Only the HF parity / export tests need it.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif "relative_attention_bias" in name or name.startswith("shared"):
        p.copy_(torch.randn_like(p))
      else:  # Linear [out, in].
        p.copy_(torch.randn_like(p) * p.shape[1] ** -0.5)


def shift_right(targets: np.ndarray) -> np.ndarray:
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def copy_task_batches(start: int, *, batch_size: int = 8, length: int = 5, seed: int = 0,
                      vocab: int = VOCAB) -> Iterator[dict[str, np.ndarray]]:
  """A learnable task: the target is the first 3 input tokens then EOS.

  Deterministic by (seed, batch index), so `start` skips exactly `start` batches.
  """
  i = start
  while True:
    rng = np.random.default_rng([seed, i])
    lens = rng.integers(3, length + 1, batch_size)
    enc = np.zeros((batch_size, length + 1), np.int32)
    tgt = np.zeros((batch_size, 4), np.int32)
    for b, n in enumerate(lens):
      toks = rng.integers(2, vocab, n)
      enc[b, :n], enc[b, n] = toks, 1
      tgt[b, :3], tgt[b, 3] = toks[:3], 1
    yield {"encoder_input_tokens": enc, "decoder_input_tokens": shift_right(tgt),
           "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.float32)}
    i += 1
