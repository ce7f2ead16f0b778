"""T5 cross-entropy with z-loss, returned as sums plus denominators.

Sums (not means) keep averages exact across devices, micro-batches and logging windows:
the caller divides by `weight_sum` once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy_sums(logits: Array, targets: Array, weights: Array,
                       z_loss: float = 1e-4) -> dict[str, Array]:
  """Token cross-entropy and z-loss.

  Args:
    logits: [B, T, V] float32.
    targets: [B, T] int target tokens.
    weights: [B, T] loss weights (0 on padding).
    z_loss: coefficient of the `log(Z)^2` auxiliary loss (T5X: 1e-4) that keeps the
      softmax normaliser near 1.

  Returns:
    Dict of scalars: `loss_sum` (cross-entropy + z-loss), `z_loss_sum`, `weight_sum`,
    `correct_sum` (argmax == target, weighted).
  """
  if logits.shape[:2] != targets.shape or targets.shape != weights.shape:
    raise ValueError(f"Shape mismatch: logits {logits.shape}, targets {targets.shape}, "
                     f"weights {weights.shape}.")
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  ce = log_z - target_logit
  z = z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum((ce + z) * weights),
      "z_loss_sum": jnp.sum(z * weights),
      "weight_sum": jnp.sum(weights),
      "correct_sum": jnp.sum(correct * weights),
  }
