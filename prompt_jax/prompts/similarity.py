"""Prompt transferability metrics: PANDA-style task embeddings, E_avg and neuron overlap.

For a source prompt P_S and a target prompt P_T (trained on the target task), each metric
scores how well P_S should transfer to the target (higher: more transferable):

* `s(S, T)`, PANDA-style (Zhong et al. 2022; the construction is our design, the paper's
  pooling is not public): h_X = the mean-pooled final encoder states of the frozen model
  run with prompt P_X over N target inputs, then cos(h_S, h_T). Pooling "tokens": the mean
  over every non-padding position (prompt and input); "prompt": over the P prompt
  positions only. The per-example means are averaged over the N examples.
* E_avg (SPoT, Vu et al. 2022): cos(mean_p P_S[p], mean_p P_T[p]).
* ON (Su et al. 2022): the overlap of the FFN neurons the two prompts activate (> 0) in each
  encoder layer, at the first prompt position (PANDA's code hooks token 0), averaged over
  the target inputs; our reading: per layer the Jaccard overlap |A_S & A_T| / |A_S | A_T|
  of the active sets, averaged over layers.

The pure functions (`cosine`, `e_avg`, `neuron_overlap`, `pool_states`) take numpy arrays;
`task_embedding` and `ffn_activations` run the frozen model (a `T5Transformer` and its
parameters; the prompt enters as a plain `Prompt`'s table).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.models import T5Transformer
from prompt_jax.prompts.lester import Prompt

POOLINGS = ("tokens", "prompt")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  """cos(a, b) of two vectors (0 if either is zero)."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  norm = np.linalg.norm(a) * np.linalg.norm(b)
  return float(a @ b / norm) if norm else 0.0


def e_avg(source: np.ndarray, target: np.ndarray) -> float:
  """SPoT's E_avg: the cosine of the two prompts' mean vectors ([P, D] each)."""
  return cosine(np.mean(source, axis=0), np.mean(target, axis=0))


def neuron_overlap(source: np.ndarray, target: np.ndarray) -> float:
  """ON: mean over layers of the Jaccard overlap of the neurons active (> 0).

  Args:
    source / target: [layers, F] activations (e.g. averaged over the target inputs).
  """
  a, b = np.asarray(source) > 0, np.asarray(target) > 0
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"Activations must both be [layers, F], got {a.shape} and {b.shape}.")
  union = np.sum(a | b, axis=1)
  inter = np.sum(a & b, axis=1)
  per_layer = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
  return float(np.mean(per_layer))


def pool_states(encoded: np.ndarray, mask: np.ndarray, prompt_length: int,
                pooling: str = "tokens") -> np.ndarray:
  """Per-example mean-pooled encoder states [B, D] of a prompted batch.

  Args:
    encoded: [B, P+L, D] final encoder states (the prompt at positions 0..P-1).
    mask: [B, P+L] the encoder mask (True on prompt and non-padding input positions).
    prompt_length: P.
    pooling: "tokens" (every masked position) or "prompt" (positions 0..P-1).
  """
  if pooling not in POOLINGS:
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
  w = np.asarray(mask, np.float64)
  if pooling == "prompt":
    w = np.zeros_like(w)
    w[:, :prompt_length] = 1.0
  return (np.einsum("BLD,BL->BD", np.asarray(encoded, np.float64), w)
          / np.maximum(w.sum(axis=1, keepdims=True), 1.0))


@functools.lru_cache(maxsize=8)
def _encode_fn(config: Any, length: int):
  model = T5Transformer(config, prompt=Prompt(length))

  def encode(params, tokens):
    collections = model.apply({"params": params}, tokens, method=model.encode,
                              mutable=["intermediates"])
    (encoded, mask), state = collections
    acts = [state["intermediates"]["encoder"][f"layers_{i}"]["mlp"]["ffn_activation"][0]
            for i in range(config.num_layers)]
    return encoded, mask, jnp.stack([a[:, 0] for a in acts], axis=1)  # [B, layers, F]

  return jax.jit(encode)


def _prompted_encode(config, frozen: Any, prompt: np.ndarray, tokens: np.ndarray,
                     batch_size: int):
  """(encoded [N, P+L, D], mask, activations at position 0 [N, layers, F]) in batches."""
  fn = _encode_fn(config, int(prompt.shape[0]))
  params = {**frozen, "prompt": {"prompt": jnp.asarray(prompt, jnp.float32)}}
  outs = []
  for i in range(0, len(tokens), batch_size):
    chunk = np.asarray(tokens[i:i + batch_size])
    n = len(chunk)
    if n < batch_size:  # One compiled shape: pad with copies, drop them after.
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
    outs.append([np.asarray(x)[:n] for x in fn(params, jnp.asarray(chunk))])
  return [np.concatenate(parts) for parts in zip(*outs)]


def prompt_features(config, frozen: Any, prompt: np.ndarray, tokens: np.ndarray, *,
                    pooling: str = "tokens", batch_size: int = 32
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(task embedding h [D], mean FFN activations at position 0 [layers, F]) of a prompt.

  Args:
    config: the frozen model's `T5Config`.
    frozen: its parameters (no prompt).
    prompt: [P, D] the prompt P_X.
    tokens: [N, L] the target task's encoder inputs (0 = padding).
  """
  if prompt.ndim != 2 or prompt.shape[1] != config.d_model:
    raise ValueError(f"A prompt must be [P, {config.d_model}], got {prompt.shape}.")
  encoded, mask, acts = _prompted_encode(config, frozen, prompt, tokens, batch_size)
  h = pool_states(encoded, mask, prompt.shape[0], pooling).mean(axis=0)
  return h, acts.mean(axis=0)


def matrices(config, frozen: Any, sources: dict[str, np.ndarray],
             targets: dict[str, tuple[np.ndarray, np.ndarray]], *, pooling: str = "tokens",
             batch_size: int = 32) -> dict[str, np.ndarray]:
  """The three metrics for every source x target pair.

  Args:
    sources: name -> source prompt [P, D] (rows of the matrices, in this order).
    targets: name -> (the target's prompt P_T [P', D], its encoder inputs [N, L]) (columns).

  Returns:
    {"panda": [S, T], "e_avg": [S, T], "on": [S, T]}.
  """
  out = {k: np.zeros((len(sources), len(targets))) for k in ("panda", "e_avg", "on")}
  for j, (prompt_t, tokens) in enumerate(targets.values()):
    h_t, a_t = prompt_features(config, frozen, prompt_t, tokens, pooling=pooling,
                               batch_size=batch_size)
    for i, prompt_s in enumerate(sources.values()):
      h_s, a_s = prompt_features(config, frozen, prompt_s, tokens, pooling=pooling,
                                 batch_size=batch_size)
      out["panda"][i, j] = cosine(h_s, h_t)
      out["e_avg"][i, j] = e_avg(prompt_s, prompt_t)
      out["on"][i, j] = neuron_overlap(a_s, a_t)
  return out
