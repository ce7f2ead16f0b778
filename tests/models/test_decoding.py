"""Decoding and scoring against no-cache references on tiny random T5s, with and without a
prompt module in place."""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.models import T5Config, T5Transformer
from prompt_jax.models.decoding import (beam_search, brevity_penalty, greedy_decode,
                                        score_sequences)

EOS = 1
B, L, T = 4, 7, 6
GATED = T5Config(vocab_size=37, d_model=8, d_kv=3, d_ff=16, num_layers=2, num_decoder_layers=3,
                 num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.0)
RELU_TIED = GATED.replace(feed_forward_proj="relu", tie_word_embeddings=True, num_layers=3,
                          num_decoder_layers=2)
TINY_VOCAB = GATED.replace(vocab_size=4)


class PrefixPrompt(nn.Module):
  """Test-only prompt: a bank [tasks, P, D] prepended to the inputs (row 0 without task ids)."""
  length: int = 3
  num_tasks: int = 2

  @nn.compact
  def __call__(self, embedded, tokens, mask, *, task_ids, deterministic):
    batch, _, d_model = embedded.shape
    bank = self.param("prompt", nn.initializers.normal(1.0),
                      (self.num_tasks, self.length, d_model))
    if task_ids is None:
      prompt = jnp.broadcast_to(bank[0], (batch, self.length, d_model))
    else:
      prompt = bank[task_ids]  # [B, P, D]
    ones = jnp.ones((batch, self.length), bool)
    return (jnp.concatenate([prompt.astype(embedded.dtype), embedded], axis=1),
            jnp.concatenate([ones, mask], axis=1))


def _inputs(vocab: int, seed: int = 0) -> jax.Array:
  """Encoder tokens [B, L] with padding at the end of some rows."""
  tokens = np.random.RandomState(seed).randint(2, vocab, (B, L))
  tokens[1, 5:] = 0
  tokens[3, 2:] = 0
  return jnp.asarray(tokens, jnp.int32)


def _random_params(model: T5Transformer, vocab: int, seed: int = 0):
  """T5-like random params from numpy (compiling `model.init`'s RNG would take seconds)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), _inputs(vocab),
                          jnp.zeros((B, T), jnp.int32))["params"]
  rng = np.random.RandomState(seed)

  def init(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:  # RMS norm scales around 1.
      return jnp.asarray(1.0 + 0.1 * rng.randn(*leaf.shape), jnp.float32)
    std = leaf.shape[0] ** -0.5 if "kernel" in name else 1.0  # Embeddings, relpos, prompt: 1.
    return jnp.asarray(std * rng.randn(*leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(init, nn.meta.unbox(shapes))


def _build(cfg: T5Config, prompt: nn.Module | None, eos_scale: float):
  """A random model whose EOS logit is scaled up so that some rows end before T."""
  model = T5Transformer(cfg, prompt=prompt)
  params = _random_params(model, cfg.vocab_size)
  if cfg.tie_word_embeddings:
    emb = params["token_embedder"]["embedding"]
    params["token_embedder"]["embedding"] = emb.at[EOS].multiply(eos_scale)
  else:
    kernel = params["decoder"]["logits_dense"]["kernel"]
    params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, EOS].multiply(eos_scale)
  return model, params


CASES = {
    # eos_scale is tuned so that greedy ends some rows early and runs others to T.
    "gated": dict(cfg=GATED, prompt=False, task_ids=None, eos_scale=1.5),
    "relu_tied": dict(cfg=RELU_TIED, prompt=False, task_ids=None, eos_scale=4.0),
    "prompt": dict(cfg=GATED, prompt=True, task_ids=np.array([0, 1, 1, 0], np.int32),
                   eos_scale=2.0),
}


@functools.lru_cache(maxsize=None)
def _case(name: str):
  """(model, params, encoder tokens, task_ids) for a named case, built once per session."""
  c = CASES[name]
  model, params = _build(c["cfg"], PrefixPrompt() if c["prompt"] else None, c["eos_scale"])
  task_ids = None if c["task_ids"] is None else jnp.asarray(c["task_ids"])
  return model, params, _inputs(c["cfg"].vocab_size), task_ids


@functools.lru_cache(maxsize=None)
def _jitted(name: str, fn, **static):
  model = _case(name)[0]
  return jax.jit(functools.partial(fn, model, **static))


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, enc, dec, task_ids):
  """Teacher-forced logits without any cache."""
  return model.apply({"params": params}, enc, dec, task_ids=task_ids)


def _reference_greedy(model, params, enc, task_ids, max_len: int) -> np.ndarray:
  """Greedy decoding that re-runs the full decoder on the whole prefix each step."""
  dec = np.zeros((enc.shape[0], max_len), np.int32)
  out = np.zeros_like(dec)
  finished = np.zeros(enc.shape[0], bool)
  for t in range(max_len):
    logits = np.asarray(_forward(model, params, enc, jnp.asarray(dec), task_ids))
    token = np.where(finished, 0, logits[:, t].argmax(-1))
    out[:, t] = token
    finished |= token == EOS
    if t + 1 < max_len:
      dec[:, t + 1] = token
  return out


def _lengths_and_weights(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Decoded length (through the first EOS, else all of T) and the matching weights."""
  tokens = np.asarray(tokens)
  is_eos = tokens == EOS
  lengths = np.where(is_eos.any(-1), is_eos.argmax(-1) + 1, tokens.shape[-1])
  weights = np.arange(tokens.shape[-1]) < lengths[..., None]
  return lengths, weights


@pytest.mark.parametrize("name", list(CASES))
def test_cached_steps_match_teacher_forcing(name):
  model, params, enc, task_ids = _case(name)
  rng = np.random.RandomState(1)
  dec = jnp.asarray(rng.randint(0, model.config.vocab_size, (B, T)), jnp.int32).at[:, 0].set(0)
  expected = _forward(model, params, enc, dec, task_ids)  # [B, T, V]

  encoded, mask = jax.jit(functools.partial(model.apply, method=model.encode))(
      {"params": params}, enc, task_ids=task_ids)
  if name == "prompt":
    assert encoded.shape[1] == L + 3 and bool(mask[:, :3].all())
  step = jax.jit(functools.partial(model.apply, method=model.decode, decode=True,
                                   max_decode_length=T, mutable=["cache"]))
  _, variables = step({"params": params}, encoded, mask, jnp.zeros((B, T), jnp.int32))
  cache = variables["cache"]
  for t in range(T):
    logits, variables = step({"params": params, "cache": cache}, encoded, mask, dec[:, t:t + 1])
    cache = variables["cache"]
    np.testing.assert_allclose(logits[:, 0], expected[:, t], atol=1e-5, rtol=1e-5,
                               err_msg=f"step {t}")


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_matches_uncached_reference(name):
  model, params, enc, task_ids = _case(name)
  tokens = np.asarray(_jitted(name, greedy_decode, max_decode_length=T)(
      params, enc, task_ids=task_ids))
  assert tokens.shape == (B, T) and tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens, _reference_greedy(model, params, enc, task_ids, T))
  # The fixture must exercise both stopping paths: a row ending early and a row running to T.
  lengths, weights = _lengths_and_weights(tokens)
  assert (lengths < T).any() and (~(tokens == EOS).any(-1)).any(), tokens
  assert (tokens[~weights] == 0).all()


def test_greedy_rejects_unbatched_inputs():
  model, params, enc, _ = _case("gated")
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    greedy_decode(model, params, enc[0], max_decode_length=T)


@pytest.mark.parametrize("name", ["prompt"])
def test_beam_size_one_without_penalty_is_greedy(name):
  _, params, enc, task_ids = _case(name)
  greedy = _jitted(name, greedy_decode, max_decode_length=T)(params, enc, task_ids=task_ids)
  tokens, scores = _jitted(name, beam_search, beam_size=1, max_decode_length=T, alpha=0.0)(
      params, enc, task_ids=task_ids)
  assert tokens.shape == (B, 1, T) and scores.shape == (B, 1)
  np.testing.assert_array_equal(tokens[:, 0], greedy)


@pytest.mark.parametrize("name", ["prompt"])
def test_beam_scores_are_sorted_penalised_log_likelihoods(name):
  model, params, enc, task_ids = _case(name)
  k, alpha = 4, 0.6
  tokens, scores = _jitted(name, beam_search, beam_size=k, max_decode_length=T, alpha=alpha)(
      params, enc, task_ids=task_ids)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert tokens.shape == (B, k, T) and scores.shape == (B, k)
  assert np.isfinite(scores).all()
  assert (np.diff(scores, axis=1) <= 0).all(), scores
  lengths, weights = _lengths_and_weights(tokens)
  assert (tokens[~weights] == 0).all()
  for b in range(B):  # Hypotheses of one example are distinct.
    assert len({tuple(row) for row in tokens[b]}) == k
  flat = tokens.reshape(B * k, T)
  rep = lambda x: None if x is None else jnp.repeat(x, k, axis=0)
  score = _jitted(name, score_sequences)
  loglik = score(params, rep(enc), jnp.asarray(flat), task_ids=rep(task_ids),
                 target_weights=jnp.asarray(weights.reshape(B * k, T)))
  expected = np.asarray(loglik).reshape(B, k) / brevity_penalty(lengths, alpha)
  np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=1e-5)
  # Beam search never returns less than greedy's penalised score here.
  greedy = np.asarray(_jitted(name, greedy_decode, max_decode_length=T)(
      params, enc, task_ids=task_ids))
  g_len, g_w = _lengths_and_weights(greedy)
  g_score = score(params, enc, jnp.asarray(greedy), task_ids=task_ids,
                  target_weights=jnp.asarray(g_w)) / brevity_penalty(g_len, alpha)
  assert (scores[:, 0] >= np.asarray(g_score) - 1e-5).all()


def _all_hypotheses(vocab: int, max_len: int) -> np.ndarray:
  """Every hypothesis: non-EOS tokens then EOS (padded with 0), or max_len non-EOS tokens."""
  other = [v for v in range(vocab) if v != EOS]
  rows = []
  for n in range(max_len):
    for prefix in itertools.product(other, repeat=n):
      rows.append(list(prefix) + [EOS] + [0] * (max_len - n - 1))
  rows += [list(seq) for seq in itertools.product(other, repeat=max_len)]
  return np.asarray(rows, np.int32)


def test_large_beam_finds_brute_force_optimum():
  max_len, alpha = 3, 0.6
  model, params = _build(TINY_VOCAB, None, eos_scale=1.5)
  enc = _inputs(TINY_VOCAB.vocab_size)[:2]
  hyps = _all_hypotheses(TINY_VOCAB.vocab_size, max_len)  # [N, T]: 13 ended + 27 at T.
  n = len(hyps)
  # With k = N every candidate stays in the beam, so beam search is exhaustive.
  tokens, scores = jax.jit(functools.partial(
      beam_search, model, beam_size=n, max_decode_length=max_len, alpha=alpha))(params, enc)
  lengths, weights = _lengths_and_weights(hyps)
  score = jax.jit(functools.partial(score_sequences, model))
  greedy = np.asarray(jax.jit(functools.partial(
      greedy_decode, model, max_decode_length=max_len))(params, enc))
  for b in range(enc.shape[0]):
    loglik = score(params, jnp.repeat(enc[b:b + 1], n, axis=0), jnp.asarray(hyps),
                   target_weights=jnp.asarray(weights))
    brute = np.asarray(loglik) / brevity_penalty(lengths, alpha)
    order = np.argsort(-brute, kind="stable")
    np.testing.assert_allclose(scores[b], brute[order], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(tokens[b, 0], hyps[order[0]])
    g_index = [tuple(h) for h in hyps].index(tuple(greedy[b]))
    assert scores[b, 0] >= brute[g_index] - 1e-6


def test_score_sequences_matches_manual_gather():
  model, params, enc, task_ids = _case("prompt")
  rng = np.random.RandomState(2)
  targets = rng.randint(2, model.config.vocab_size, (B, T))
  for b, n in enumerate([6, 3, 1, 4]):  # EOS at position n-1, then padding.
    targets[b, n - 1] = EOS
    targets[b, n:] = 0
  dec_inputs = np.concatenate([np.zeros((B, 1), np.int32), targets[:, :-1]], axis=1)
  logits = np.asarray(_forward(model, params, enc, jnp.asarray(dec_inputs), task_ids),
                      np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = [sum(logp[b, t, targets[b, t]] for t in range(T) if targets[b, t] != 0)
              for b in range(B)]
  got = _jitted("prompt", score_sequences)(params, enc, jnp.asarray(targets, jnp.int32),
                                            task_ids=task_ids)
  assert got.shape == (B,)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_scores_and_decoding_see_the_prompt():
  model, params, enc, task_ids = _case("prompt")
  targets = jnp.asarray(np.tile([5, 6, EOS, 0, 0, 0], (B, 1)), jnp.int32)
  moved = jax.tree_util.tree_map(lambda x: x, params)
  moved["prompt"]["prompt"] = params["prompt"]["prompt"] + 1.0
  score = _jitted("prompt", score_sequences)
  before = score(params, enc, targets, task_ids=task_ids)
  after = score(moved, enc, targets, task_ids=task_ids)
  assert (np.abs(np.asarray(after - before)) > 1e-4).all()
  # Rows 0 and 3 use task 0, rows 1 and 2 task 1: swapping the ids must change the scores.
  swapped = score(params, enc, targets, task_ids=1 - task_ids)
  assert (np.abs(np.asarray(swapped - before)) > 1e-4).all()


def test_decoding_compiles_once():
  _, params, enc, task_ids = _case("prompt")
  greedy = _jitted("prompt", greedy_decode, max_decode_length=T)
  beam = _jitted("prompt", beam_search, beam_size=4, max_decode_length=T, alpha=0.6)
  other = jax.tree_util.tree_map(lambda x: x * 0.9, params)
  enc2 = jnp.flip(enc, axis=1)
  for fn in (greedy, beam):
    fn(params, enc, task_ids=task_ids)
    fn(other, enc2, task_ids=1 - task_ids)
    assert fn._cache_size() == 1
