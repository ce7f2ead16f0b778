"""Combining a prompt with embedded encoder inputs (the seam of `T5Transformer.encode`).

Shape letters: B batch, L input length, P prompt length, D d_model.

Two placements:
  prefix              [P; X]          Lester et al.: the prompt takes encoder positions 0..P-1.
  suffix_before_eos   [X; P; EOS]     the cross-lingual soft-prompt paper's placement, ported to
                                      the encoder: the prompt sits after the last input token
                                      and before the EOS that closes the input.
Both return the combined inputs [B, P+L, D] and their mask [B, P+L]; the model takes its
encoder self-attention mask and the decoder's cross-attention mask from that mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
PLACEMENTS = ("prefix", "suffix_before_eos")


def _broadcast_prompt(prompt: Array, batch: int) -> Array:
  """[P, D] or [B, P, D] -> [B, P, D]."""
  if prompt.ndim == 2:
    return jnp.broadcast_to(prompt[None], (batch, *prompt.shape))
  if prompt.ndim != 3 or prompt.shape[0] != batch:
    raise ValueError(f"prompt must be [P, D] or [B={batch}, P, D], got {prompt.shape}.")
  return prompt


def prefix(prompt: Array, embedded: Array, mask: Array) -> tuple[Array, Array]:
  """[P, D] | [B, P, D], [B, L, D], [B, L] -> [B, P+L, D], [B, P+L]."""
  batch = embedded.shape[0]
  p = _broadcast_prompt(prompt, batch).astype(embedded.dtype)
  ones = jnp.ones((batch, p.shape[1]), dtype=mask.dtype)
  return jnp.concatenate([p, embedded], axis=1), jnp.concatenate([ones, mask], axis=1)


def suffix_before_eos(prompt: Array, embedded: Array, tokens: Array, mask: Array,
                      eos_id: int = 1) -> tuple[Array, Array]:
  """Inserts the prompt right before each row's closing EOS (or after its last token).

  Args:
    prompt: [P, D] or [B, P, D].
    embedded: [B, L, D] embedded inputs.
    tokens: [B, L] int tokens (0 = padding), used to find the EOS.
    mask: [B, L] validity mask.
    eos_id: the EOS token id.

  Returns:
    [B, P+L, D] inputs laid out as [x_0 .. x_{e-1}; prompt; EOS; padding] and the mask
    [B, P+L] that covers the n + P valid positions (n = valid input tokens of the row).
  """
  batch, length, _ = embedded.shape
  p = _broadcast_prompt(prompt, batch).astype(embedded.dtype)  # [B, P, D]
  plen = p.shape[1]
  n = jnp.sum(mask.astype(jnp.int32), axis=1)  # [B]
  last = jnp.take_along_axis(tokens, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
  ends_with_eos = (n > 0) & (last == eos_id)
  insert_at = jnp.where(ends_with_eos, n - 1, n)  # [B]
  j = jnp.arange(length + plen)[None, :]  # [1, P+L]
  e = insert_at[:, None]
  in_prompt = (j >= e) & (j < e + plen)
  src_token = jnp.clip(jnp.where(j < e, j, j - plen), 0, length - 1)  # [B, P+L]
  src_prompt = jnp.clip(j - e, 0, plen - 1)
  from_tokens = jnp.take_along_axis(embedded, src_token[..., None], axis=1)
  from_prompt = jnp.take_along_axis(p, src_prompt[..., None], axis=1)
  combined = jnp.where(in_prompt[..., None], from_prompt, from_tokens)
  new_mask = j < (n[:, None] + plen)
  return combined, new_mask.astype(mask.dtype)


def combine(placement: str, prompt: Array, embedded: Array, tokens: Array, mask: Array,
            eos_id: int = 1) -> tuple[Array, Array]:
  """Dispatches on `placement` (one of PLACEMENTS)."""
  if placement == "prefix":
    return prefix(prompt, embedded, mask)
  if placement == "suffix_before_eos":
    return suffix_before_eos(prompt, embedded, tokens, mask, eos_id)
  raise ValueError(f"Unknown prompt placement {placement!r}; use one of {PLACEMENTS}.")
