"""Decoding and scoring with a (prompted) T5: greedy, beam search, sequence log-likelihood.

Shape letters as in `prompt_jax.models.t5`: B batch, L encoder length (L' with the prompt),
T decoder length, V vocab; here also k beams.

Every function is pure and jit-able: bind the model and the static sizes, then jit, e.g.

  decode_fn = jax.jit(functools.partial(greedy_decode, model, max_decode_length=8))
  tokens = decode_fn(params, encoder_input_tokens)  # [B, 8]

The encoder (with the prompt module, if the model has one) runs once per batch; the decoder
runs one token per step against a KV cache. Decoded tokens are the targets (no start token):
the first EOS is kept and everything after it is padding (0). A sequence that never emits
EOS runs to `max_decode_length`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from prompt_jax.models.t5 import T5Transformer

Array = jax.Array
Params = Any
_NEG_INF = -jnp.inf  # A dead beam / empty slot; never mixed with +inf, so never NaN.


def brevity_penalty(length: Array | int, alpha: float) -> Array:
  """T5X length penalty `((5 + length) / 6) ** alpha`; a score is log-prob / penalty."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def shift_right(targets: Array, start_token_id: int) -> Array:
  """Decoder inputs from targets [B, T]: the start token, then targets[:, :-1]."""
  start = jnp.full_like(targets[:, :1], start_token_id)
  return jnp.concatenate([start, targets[:, :-1]], axis=1)


def _check_tokens(name: str, tokens: Array) -> None:
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{name} must be int [B, L], got {tokens.dtype}{list(tokens.shape)}.")


def _encode(model: T5Transformer, params: Params, tokens: Array,
            task_ids: Array | None) -> tuple[Array, Array]:
  """Runs the (prompted) encoder once: -> encoded [B, L', D], mask [B, L']."""
  return model.apply({"params": params}, tokens, method=model.encode, enable_dropout=False,
                     task_ids=task_ids)


def _init_cache(model: T5Transformer, params: Params, encoded: Array, encoder_mask: Array,
                max_decode_length: int) -> Any:
  """Allocates an empty decoder KV cache for `encoded.shape[0]` rows of T steps."""
  dummy = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)  # [B, T]
  # The first decode=True call only allocates the cache; its logits are discarded (and
  # dead-code eliminated under jit).
  _, variables = model.apply({"params": params}, encoded, encoder_mask, dummy,
                             method=model.decode, decode=True,
                             max_decode_length=max_decode_length, mutable=["cache"])
  return variables["cache"]


def _decode_step(model: T5Transformer, params: Params, cache: Any, encoded: Array,
                 encoder_mask: Array, token: Array,
                 max_decode_length: int) -> tuple[Array, Any]:
  """One cached decoder step: token [B] -> float32 logits [B, V] and the updated cache."""
  logits, variables = model.apply(
      {"params": params, "cache": cache}, encoded, encoder_mask, token[:, None],
      method=model.decode, decode=True, max_decode_length=max_decode_length,
      mutable=["cache"])
  return logits[:, 0], variables["cache"]


class _GreedyState(NamedTuple):
  step: Array       # int32 scalar: position being decoded.
  last: Array       # [B] previous token (decoder input of this step).
  tokens: Array     # [B, T] decoded so far; zeros beyond `step`.
  finished: Array   # [B] bool: emitted EOS.
  cache: Any


def greedy_decode(model: T5Transformer, params: Params, encoder_input_tokens: Array, *,
                  max_decode_length: int, task_ids: Array | None = None,
                  early_stop: bool = True) -> Array:
  """Argmax decoding with a KV cache; stops early once every row has emitted EOS.

  The loop is a `while_loop` whose condition also checks that some row is still running,
  so a batch of short answers costs only as many decoder steps as its longest answer.
  Rows that finished keep emitting padding, so the tokens equal those of a fixed-length
  decode (`early_stop=False`, always T steps; kept for tests and benchmarks).

  Args:
    model: the T5 (with or without a prompt module).
    params: its full parameter tree (frozen model and prompt).
    encoder_input_tokens: int [B, L], 0 = padding.
    max_decode_length: T, the number of decoder steps at most (static).
    task_ids: optional [B] task ids for per-example prompt modules.
    early_stop: stop once every row has emitted EOS (default); False runs all T steps.

  Returns:
    int32 tokens [B, T]: targets up to and including the first EOS, then 0.
  """
  _check_tokens("encoder_input_tokens", encoder_input_tokens)
  cfg = model.config
  batch = encoder_input_tokens.shape[0]
  encoded, mask = _encode(model, params, encoder_input_tokens, task_ids)
  init = _GreedyState(
      step=jnp.array(0, jnp.int32),
      last=jnp.full((batch,), cfg.decoder_start_token_id, jnp.int32),
      tokens=jnp.zeros((batch, max_decode_length), jnp.int32),
      finished=jnp.zeros((batch,), bool),
      cache=_init_cache(model, params, encoded, mask, max_decode_length))

  def cond(s: _GreedyState) -> Array:
    running = s.step < max_decode_length
    return running & ~jnp.all(s.finished) if early_stop else running

  def body(s: _GreedyState) -> _GreedyState:
    logits, cache = _decode_step(model, params, s.cache, encoded, mask, s.last,
                                 max_decode_length)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B]
    token = jnp.where(s.finished, cfg.pad_token_id, token)
    tokens = jax.lax.dynamic_update_slice_in_dim(s.tokens, token[:, None], s.step, axis=1)
    return _GreedyState(s.step + 1, token, tokens, s.finished | (token == cfg.eos_token_id),
                        cache)

  return jax.lax.while_loop(cond, body, init).tokens


# ----------------------------------------------------------------------------- beam search


class _BeamState(NamedTuple):
  step: Array            # int32 scalar: position being decoded.
  alive_seqs: Array      # [B, k, T] unfinished hypotheses (no EOS).
  alive_logp: Array      # [B, k] their log-probabilities (-inf for an empty slot).
  finished_seqs: Array   # [B, k, T] hypotheses ending in EOS, padded with 0.
  finished_scores: Array  # [B, k] penalised scores, best first (-inf = empty slot).
  done: Array            # [B] bool: no alive hypothesis can enter the finished top k.
  cache: Any             # decoder KV cache for B * k rows.


def _flat(x: Array) -> Array:
  """[B, k, ...] -> [B * k, ...]."""
  return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _gather_beams(x: Array, beam_idx: Array) -> Array:
  """Picks beams per row: x [B, k, ...], beam_idx int [B, n] -> [B, n, ...]."""
  return jax.vmap(lambda row, idx: row[idx])(x, beam_idx)


def _gather_cache(cache: Any, beam_idx: Array, beam_size: int) -> Any:
  """Reorders the [B * k, ...] cache leaves by beam_idx [B, k]; scalars (the index) pass."""
  def gather(x):
    if x.ndim == 0:
      return x
    rows = x.reshape(-1, beam_size, *x.shape[1:])  # [B, k, ...]
    return _flat(_gather_beams(rows, beam_idx))
  return jax.tree_util.tree_map(gather, cache)


def _top_k(scores: Array, k: int, *arrays: Array) -> tuple[Array, ...]:
  """Top k along axis 1 of scores [B, n] (best first) and the matching rows of arrays."""
  top_scores, idx = jax.lax.top_k(scores, k)
  return (top_scores, *(_gather_beams(a, idx) for a in arrays))


def _beam_step(s: _BeamState, logp: Array, *, beam_size: int, alpha: float, eos_id: int,
               max_decode_length: int) -> tuple[_BeamState, Array]:
  """Extends the beams with next-token log-probs logp [B, k, V].

  Returns the new state (cache not yet reordered) and the source beam [B, k] of each new
  alive hypothesis, for reordering the cache.
  """
  batch, k, vocab = logp.shape
  cand = (s.alive_logp[:, :, None] + logp).reshape(batch, k * vocab)  # [B, k*V]
  # 2k candidates always hold >= k non-EOS ones (each beam has one EOS extension).
  cand_logp, cand_idx = jax.lax.top_k(cand, 2 * k)  # [B, 2k]
  cand_beam, cand_token = cand_idx // vocab, (cand_idx % vocab).astype(jnp.int32)
  cand_seqs = _gather_beams(s.alive_seqs, cand_beam)  # [B, 2k, T]
  cand_seqs = jax.lax.dynamic_update_slice_in_dim(
      cand_seqs, cand_token[:, :, None], s.step, axis=2)
  is_eos = cand_token == eos_id

  # EOS finishes a hypothesis only when it ranks in the top k (as greedy would pick it), so
  # beam_size=1 with alpha=0 is exactly greedy. Rows already done take nothing new.
  rank_ok = jnp.arange(2 * k)[None, :] < k
  new_ok = is_eos & rank_ok & jnp.isfinite(cand_logp) & ~s.done[:, None]
  new_scores = jnp.where(new_ok, cand_logp / brevity_penalty(s.step + 1, alpha), _NEG_INF)
  finished_scores, finished_seqs = _top_k(
      jnp.concatenate([s.finished_scores, new_scores], axis=1), k,
      jnp.concatenate([s.finished_seqs, cand_seqs], axis=1))

  # Alive: the best k non-EOS candidates.
  alive_logp, alive_seqs, alive_beam = _top_k(
      jnp.where(is_eos, _NEG_INF, cand_logp), k, cand_seqs, cand_beam)

  # A row is done when its k finished slots are full and no alive hypothesis can beat the
  # worst of them: log-probs only fall, so an alive score is at most logp / max penalty
  # over the lengths still reachable, step + 1 .. T (the penalty is monotone in length).
  max_penalty = jnp.maximum(brevity_penalty(s.step + 1, alpha),
                            brevity_penalty(max_decode_length, alpha))
  best_alive = alive_logp[:, 0] / max_penalty
  done = s.done | (jnp.all(jnp.isfinite(finished_scores), axis=1)
                   & (best_alive <= finished_scores[:, -1]))
  state = _BeamState(s.step + 1, alive_seqs, alive_logp, finished_seqs, finished_scores,
                     done, s.cache)
  return state, alive_beam


def _beam_finalize(s: _BeamState, *, beam_size: int, alpha: float,
                   max_decode_length: int) -> tuple[Array, Array]:
  """Best k of finished and (if the decode ran to T) alive-at-T hypotheses, best first."""
  at_end = (s.step == max_decode_length) & ~s.done[:, None]
  alive_scores = jnp.where(at_end, s.alive_logp / brevity_penalty(max_decode_length, alpha),
                           _NEG_INF)
  scores, seqs = _top_k(jnp.concatenate([s.finished_scores, alive_scores], axis=1),
                        beam_size,
                        jnp.concatenate([s.finished_seqs, s.alive_seqs], axis=1))
  return seqs, scores


def beam_search(model: T5Transformer, params: Params, encoder_input_tokens: Array, *,
                beam_size: int, max_decode_length: int, alpha: float = 0.6,
                task_ids: Array | None = None) -> tuple[Array, Array]:
  """Beam search with a per-beam KV cache and the T5X brevity penalty.

  The encoder (and prompt, with its task_ids) runs once per example; its outputs and mask are
  then repeated per beam, as is the cache. A hypothesis is finished by EOS or by reaching
  `max_decode_length`; its score is its log-likelihood / `brevity_penalty(length, alpha)`,
  with length counting the EOS. Decoding stops early once, in every row, no alive
  hypothesis can still enter the top `beam_size`.

  Args:
    model: the T5 (with or without a prompt module).
    params: its full parameter tree.
    encoder_input_tokens: int [B, L], 0 = padding.
    beam_size: k (static).
    max_decode_length: T (static).
    alpha: brevity penalty exponent (0 = plain log-likelihood).
    task_ids: optional [B] task ids for per-example prompt modules.

  Returns:
    tokens int32 [B, k, T] (0 after EOS) and scores float32 [B, k], best first. A slot that
    no hypothesis fills (only with a tiny vocabulary) has score -inf.
  """
  _check_tokens("encoder_input_tokens", encoder_input_tokens)
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
  cfg = model.config
  batch, k, t_max = encoder_input_tokens.shape[0], beam_size, max_decode_length
  encoded, mask = _encode(model, params, encoder_input_tokens, task_ids)
  encoded = jnp.repeat(encoded, k, axis=0)  # [B*k, L', D]
  mask = jnp.repeat(mask, k, axis=0)  # [B*k, L']
  init = _BeamState(
      step=jnp.array(0, jnp.int32),
      alive_seqs=jnp.zeros((batch, k, t_max), jnp.int32),
      # Only beam 0 is live at first, so the k copies do not yield k equal hypotheses.
      alive_logp=jnp.tile(jnp.array([0.0] + [_NEG_INF] * (k - 1), jnp.float32), (batch, 1)),
      finished_seqs=jnp.zeros((batch, k, t_max), jnp.int32),
      finished_scores=jnp.full((batch, k), _NEG_INF, jnp.float32),
      done=jnp.zeros((batch,), bool),
      cache=_init_cache(model, params, encoded, mask, t_max))

  def cond(s: _BeamState) -> Array:
    return (s.step < t_max) & ~jnp.all(s.done)

  def body(s: _BeamState) -> _BeamState:
    prev = jax.lax.dynamic_index_in_dim(s.alive_seqs, jnp.maximum(s.step - 1, 0), axis=2,
                                        keepdims=False)  # [B, k]
    last = jnp.where(s.step == 0, cfg.decoder_start_token_id, prev)
    logits, cache = _decode_step(model, params, s.cache, encoded, mask, _flat(last), t_max)
    logp = jax.nn.log_softmax(logits, axis=-1).reshape(batch, k, -1)  # [B, k, V]
    new, beam_idx = _beam_step(s._replace(cache=cache), logp, beam_size=k, alpha=alpha,
                               eos_id=cfg.eos_token_id, max_decode_length=t_max)
    return new._replace(cache=_gather_cache(new.cache, beam_idx, k))

  final = jax.lax.while_loop(cond, body, init)
  return _beam_finalize(final, beam_size=k, alpha=alpha, max_decode_length=t_max)


# ----------------------------------------------------------------------------- scoring


def score_sequences(model: T5Transformer, params: Params, encoder_input_tokens: Array,
                    target_tokens: Array, *, task_ids: Array | None = None,
                    target_weights: Array | None = None) -> Array:
  """Per-example log-likelihood of given targets under teacher forcing (rank classification).

  Args:
    model: the T5 (with or without a prompt module).
    params: its full parameter tree.
    encoder_input_tokens: int [B, L], 0 = padding.
    target_tokens: int [B, T] targets (ending in EOS, then 0 padding); the decoder inputs are
      these shifted right behind the start token.
    task_ids: optional [B] task ids for per-example prompt modules.
    target_weights: optional [B, T] weights; default `target_tokens > 0` (non-padding).

  Returns:
    float32 [B]: sum over positions of weight * log p(target | inputs, earlier targets).
  """
  _check_tokens("encoder_input_tokens", encoder_input_tokens)
  _check_tokens("target_tokens", target_tokens)
  if target_weights is None:
    target_weights = target_tokens != model.config.pad_token_id
  if target_weights.shape != target_tokens.shape:
    raise ValueError(f"target_weights {target_weights.shape} must match target_tokens "
                     f"{target_tokens.shape}.")
  decoder_inputs = shift_right(target_tokens, model.config.decoder_start_token_id)
  logits = model.apply({"params": params}, encoder_input_tokens, decoder_inputs,
                       task_ids=task_ids)  # [B, T, V]
  logp = jax.nn.log_softmax(logits, axis=-1)
  token_logp = jnp.take_along_axis(logp, target_tokens[:, :, None], axis=-1)[:, :, 0]
  return jnp.sum(token_logp * target_weights.astype(jnp.float32), axis=1)  # [B]


def score_labels(model: T5Transformer, params: Params, encoder_input_tokens: Array,
                 label_tokens: Array, *, task_ids: Array | None = None) -> Array:
  """Log-likelihood of every label for every example from ONE encoder pass per example.

  Rank classification asks for the likelihood of C label strings given each input. Scoring
  each (example, label) pair with a full forward pass (`score_sequences` on B*C rows) runs
  the encoder C times on the same input; here the (prompted) encoder runs once on [B, L],
  its output is repeated per label, and only the decoder sees B*C rows. The scores equal
  `score_sequences` on the expanded pairs (to float32 rounding).

  Args:
    model: the T5 (with or without a prompt module).
    params: its full parameter tree.
    encoder_input_tokens: int [B, L], 0 = padding.
    label_tokens: int [C, T] label targets (each ending in EOS, then 0 padding).
    task_ids: optional [B] task ids for per-example prompt modules.

  Returns:
    float32 [B, C]: sum over the label's non-padding positions of log p(token | input,
    earlier label tokens).
  """
  _check_tokens("encoder_input_tokens", encoder_input_tokens)
  _check_tokens("label_tokens", label_tokens)
  batch, num_labels = encoder_input_tokens.shape[0], label_tokens.shape[0]
  encoded, mask = _encode(model, params, encoder_input_tokens, task_ids)  # [B, L', D]
  encoded = jnp.repeat(encoded, num_labels, axis=0)  # [B*C, L', D], example-major.
  mask = jnp.repeat(mask, num_labels, axis=0)  # [B*C, L']
  targets = jnp.tile(label_tokens, (batch, 1))  # [B*C, T]
  decoder_inputs = shift_right(targets, model.config.decoder_start_token_id)
  logits = model.apply({"params": params}, encoded, mask, decoder_inputs,
                       method=model.decode)  # [B*C, T, V]
  logp = jax.nn.log_softmax(logits, axis=-1)
  token_logp = jnp.take_along_axis(logp, targets[:, :, None], axis=-1)[:, :, 0]
  weights = (targets != model.config.pad_token_id).astype(jnp.float32)
  return jnp.sum(token_logp * weights, axis=1).reshape(batch, num_labels)  # [B, C]
