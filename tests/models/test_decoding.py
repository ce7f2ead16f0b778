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
from prompt_jax.models.decoding import (beam_search, greedy_decode, score_labels,
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
# Compiling dominates this file's run time; LLVM's optimisation passes roughly double it and
# do not change what these tests compare.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


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


def _random_params(model: T5Transformer, vocab: int, eos_scale: float, seed: int = 0):
  """T5-like random params as numpy arrays (compiling `model.init`'s RNG takes seconds).

  The EOS logit is scaled by eos_scale so that greedy ends some rows before T.
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), _inputs(vocab),
                          np.zeros((B, T), np.int32))["params"]
  rng = np.random.RandomState(seed)

  def init(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:  # RMS norm scales around 1.
      return (1.0 + 0.1 * rng.randn(*leaf.shape)).astype(np.float32)
    std = leaf.shape[0] ** -0.5 if "kernel" in name else 1.0  # Embeddings, relpos, prompt: 1.
    value = (std * rng.randn(*leaf.shape)).astype(np.float32)
    if "logits_dense" in name:
      value[:, EOS] *= eos_scale
    elif "token_embedder" in name and model.config.tie_word_embeddings:
      value[EOS] *= eos_scale
    return value

  return jax.tree_util.tree_map_with_path(init, nn.meta.unbox(shapes))


def _inputs(vocab: int, seed: int = 0) -> np.ndarray:
  """Encoder tokens [B, L] with padding at the end of some rows."""
  tokens = np.random.RandomState(seed).randint(2, vocab, (B, L)).astype(np.int32)
  tokens[1, 5:] = 0
  tokens[3, 2:] = 0
  return tokens


CASES = {
    # eos_scale is tuned so that greedy ends some rows early and runs others to T. The
    # prompt case is the gated (T5 1.1) config; relu_tied (T5 1.0) runs without a prompt.
    "relu_tied": dict(cfg=RELU_TIED, prompt=False, task_ids=None, eos_scale=4.0),
    "prompt": dict(cfg=GATED, prompt=True, task_ids=np.array([0, 1, 1, 0], np.int32),
                   eos_scale=2.5),
}


@functools.lru_cache(maxsize=None)
def _case(name: str):
  """(model, params, encoder tokens, task_ids) for a named case, built once per session."""
  c = CASES[name]
  model = T5Transformer(c["cfg"], prompt=PrefixPrompt() if c["prompt"] else None)
  params = _random_params(model, c["cfg"].vocab_size, c["eos_scale"])
  return model, params, _inputs(c["cfg"].vocab_size), c["task_ids"]


@functools.lru_cache(maxsize=None)
def _jitted(name: str, fn, **static):
  """fn bound to the case's model and static args, jitted once per session."""
  return _jit(functools.partial(fn, _case(name)[0], **static))


@functools.partial(_jit, static_argnums=0)
def _forward(model, params, enc, dec, task_ids):
  """Teacher-forced logits without any cache."""
  return model.apply({"params": params}, enc, dec, task_ids=task_ids)


def _reference_greedy(model, params, enc, task_ids, max_len: int) -> np.ndarray:
  """Greedy decoding that re-runs the full decoder on the whole prefix each step."""
  dec = np.zeros((enc.shape[0], max_len), np.int32)
  out = np.zeros_like(dec)
  finished = np.zeros(enc.shape[0], bool)
  for t in range(max_len):
    logits = np.asarray(_forward(model, params, enc, dec, task_ids))
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


def _penalty(lengths: np.ndarray, alpha: float) -> np.ndarray:
  """T5X brevity penalty, written out independently of the library."""
  return ((5.0 + lengths) / 6.0) ** alpha


@functools.lru_cache(maxsize=None)
def _cached_step_fns(name: str):
  """Jitted (encode + allocate cache) and (one cached decoder step) for a case."""
  model = _case(name)[0]

  @_jit
  def prepare(params, enc, task_ids):
    encoded, mask = model.apply({"params": params}, enc, method=model.encode,
                                task_ids=task_ids)
    _, variables = model.apply({"params": params}, encoded, mask, jnp.zeros((B, T), jnp.int32),
                               method=model.decode, decode=True, max_decode_length=T,
                               mutable=["cache"])
    return encoded, mask, variables["cache"]

  step = _jit(functools.partial(model.apply, method=model.decode, decode=True,
                               max_decode_length=T, mutable=["cache"]))
  return prepare, step


@pytest.mark.parametrize("name", list(CASES))
def test_cached_steps_match_teacher_forcing(name):
  model, params, enc, task_ids = _case(name)
  dec = np.random.RandomState(1).randint(0, model.config.vocab_size, (B, T)).astype(np.int32)
  dec[:, 0] = 0
  expected = np.asarray(_forward(model, params, enc, dec, task_ids))  # [B, T, V]
  prepare, step = _cached_step_fns(name)
  encoded, mask, cache = prepare(params, enc, task_ids)
  if name == "prompt":
    assert encoded.shape[1] == L + 3 and bool(mask[:, :3].all())
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


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_early_stop_equals_the_fixed_length_decode(name):
  _, params, enc, task_ids = _case(name)
  early = _jitted(name, greedy_decode, max_decode_length=T)(params, enc, task_ids=task_ids)
  fixed = _jitted(name, greedy_decode, max_decode_length=T, early_stop=False)(
      params, enc, task_ids=task_ids)
  np.testing.assert_array_equal(early, fixed)
  # A batch whose every row ends before T: the early-stopping loop ends early there.
  ends = np.asarray(early)[:, :T - 1] == EOS
  rows = np.flatnonzero(ends.any(-1))
  assert len(rows) >= 1
  # Own jitted copies: this batch shape must not add entries to the shared functions'
  # caches (test_decoding_compiles_once counts them).
  model = _case(name)[0]
  sub_ids = None if task_ids is None else task_ids[rows]
  sub = _jit(functools.partial(greedy_decode, model, max_decode_length=T))(
      params, enc[rows], task_ids=sub_ids)
  sub_fixed = _jit(functools.partial(greedy_decode, model, max_decode_length=T,
                                     early_stop=False))(params, enc[rows], task_ids=sub_ids)
  np.testing.assert_array_equal(sub, sub_fixed)
  np.testing.assert_array_equal(sub, np.asarray(early)[rows])


@pytest.mark.parametrize("name", list(CASES))
def test_score_labels_equals_one_forward_per_pair(name):
  model, params, enc, task_ids = _case(name)
  rng = np.random.RandomState(4)
  labels = rng.randint(2, model.config.vocab_size, (3, T)).astype(np.int32)  # [C, T]
  labels[0, 2], labels[0, 3:] = EOS, 0  # Labels of unequal lengths, padded.
  labels[1, 4], labels[1, 5:] = EOS, 0
  table = np.asarray(_jitted(name, score_labels)(params, enc, labels, task_ids=task_ids))
  assert table.shape == (B, 3)
  rows, cols = np.repeat(np.arange(B), 3), np.tile(np.arange(3), B)
  pairs = _jitted(name, score_sequences)(
      params, enc[rows], labels[cols], task_ids=None if task_ids is None else task_ids[rows])
  np.testing.assert_allclose(table, np.asarray(pairs).reshape(B, 3), rtol=1e-5, atol=1e-5)
  assert np.ptp(table, axis=1).min() > 1e-3  # The labels really score differently.


def test_greedy_rejects_unbatched_inputs():
  model, params, enc, _ = _case("relu_tied")
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    greedy_decode(model, params, enc[0], max_decode_length=T)


def test_beam_size_one_without_penalty_is_greedy():
  model, params, enc, task_ids = _case("prompt")
  greedy = np.asarray(_jitted("prompt", greedy_decode, max_decode_length=T)(
      params, enc, task_ids=task_ids))
  tokens, scores = _jitted("prompt", beam_search, beam_size=1, max_decode_length=T, alpha=0.0)(
      params, enc, task_ids=task_ids)
  assert tokens.shape == (B, 1, T) and scores.shape == (B, 1)
  np.testing.assert_array_equal(tokens[:, 0], greedy)
  # The case must hold a trap: a step where EOS ranks second and ending there would beat the
  # greedy sequence's log-likelihood. A beam search that finishes hypotheses from its whole
  # 2k candidate list would return that shorter sequence instead of greedy's.
  dec = np.concatenate([np.zeros((B, 1), np.int32), greedy[:, :-1]], axis=1)
  logits = np.asarray(_forward(model, params, enc, dec, task_ids), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # [B, T, V]
  lengths, weights = _lengths_and_weights(greedy)
  prefix = np.cumsum(np.take_along_axis(logp, greedy[:, :, None], -1)[:, :, 0] * weights, 1)
  prefix = np.concatenate([np.zeros((B, 1)), prefix], axis=1)  # [B, T+1]
  eos_second = (logp > logp[:, :, EOS:EOS + 1]).sum(-1) == 1  # [B, T]
  better = prefix[:, :-1] + logp[:, :, EOS] > prefix[np.arange(B), lengths][:, None]
  assert (eos_second & better & weights).any()


def test_beam_scores_are_sorted_penalised_log_likelihoods():
  model, params, enc, task_ids = _case("prompt")
  k, alpha = 4, 0.6
  tokens, scores = _jitted("prompt", beam_search, beam_size=k, max_decode_length=T,
                           alpha=alpha)(params, enc, task_ids=task_ids)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert tokens.shape == (B, k, T) and scores.shape == (B, k)
  assert np.isfinite(scores).all()
  assert (np.diff(scores, axis=1) <= 0).all(), scores
  for b in range(B):  # Hypotheses of one example are distinct.
    assert len({tuple(row) for row in tokens[b]}) == k
  greedy = np.asarray(_jitted("prompt", greedy_decode, max_decode_length=T)(
      params, enc, task_ids=task_ids))
  # Rescore the B * k beams and the B greedy outputs in one teacher-forced batch.
  seqs = np.concatenate([tokens.reshape(B * k, T), greedy])
  lengths, weights = _lengths_and_weights(seqs)
  assert (seqs[~weights] == 0).all()
  rows = np.concatenate([np.repeat(np.arange(B), k), np.arange(B)])
  loglik = _jitted("prompt", score_sequences)(params, enc[rows], seqs, task_ids=task_ids[rows],
                                              target_weights=weights)
  rescored = np.asarray(loglik) / _penalty(lengths, alpha)
  np.testing.assert_allclose(scores, rescored[:B * k].reshape(B, k), atol=1e-5, rtol=1e-5)
  # In this case beam search beats (or ties) greedy's penalised score on every row.
  assert (scores[:, 0] >= rescored[B * k:] - 1e-5).all()


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
  max_len, alpha, examples = 3, 0.6, 2
  model = T5Transformer(TINY_VOCAB)
  params = _random_params(model, TINY_VOCAB.vocab_size, eos_scale=1.5)
  enc = _inputs(TINY_VOCAB.vocab_size)[:examples]
  hyps = _all_hypotheses(TINY_VOCAB.vocab_size, max_len)  # [N, T]: 13 ended + 27 at T.
  n = len(hyps)
  # With k = N every candidate stays in the beam, so beam search is exhaustive and returns
  # all N hypotheses, best first.
  tokens, scores = _jit(functools.partial(
      beam_search, model, beam_size=n, max_decode_length=max_len, alpha=alpha))(params, enc)
  lengths, weights = _lengths_and_weights(np.tile(hyps, (examples, 1)))
  loglik = _jit(functools.partial(score_sequences, model))(
      params, np.repeat(enc, n, axis=0), np.tile(hyps, (examples, 1)), target_weights=weights)
  brute = (np.asarray(loglik) / _penalty(lengths, alpha)).reshape(examples, n)
  for b in range(examples):
    order = np.argsort(-brute[b], kind="stable")
    np.testing.assert_allclose(scores[b], brute[b, order], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(tokens[b, 0], hyps[order[0]])
  assert np.isfinite(scores).all()


def _reference_beam(model, params, enc_row, k: int, alpha: float, max_len: int):
  """Beam search in numpy, re-running the full decoder each step, without early stopping.

  Same rules as the library: keep the best k non-EOS extensions among the best 2k; an EOS
  extension finishes only when it ranks in the top k; hypotheses alive at max_len count too.
  """
  alive, finished = [((), 0.0)], []  # (tokens, log-prob) / (tokens, score)
  for t in range(max_len):
    dec = np.zeros((k, max_len), np.int32)  # Always k rows: one compiled shape.
    for i, (seq, _) in enumerate(alive):
      dec[i, 1:t + 1] = seq
    logits = np.asarray(_forward(model, params, np.repeat(enc_row[None], k, 0), dec, None),
                        np.float64)[:, t]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # [k, V]
    cands = sorted(((lp + logp[i, v], seq + (v,)) for i, (seq, lp) in enumerate(alive)
                    for v in range(logp.shape[-1])), key=lambda c: -c[0])[:2 * k]
    finished += [(seq, lp / _penalty(t + 1, alpha)) for lp, seq in cands[:k] if seq[-1] == EOS]
    alive = [(seq, lp) for lp, seq in cands if seq[-1] != EOS][:k]
  finished += [(seq, lp / _penalty(max_len, alpha)) for seq, lp in alive]
  best = sorted(finished, key=lambda f: -f[1])[:k]
  tokens = np.asarray([list(seq) + [0] * (max_len - len(seq)) for seq, _ in best], np.int32)
  return tokens, np.asarray([score for _, score in best])


def test_beam_search_matches_uncached_reference_beam():
  # Frequent EOS (eos_scale) fills the finished slots while a strong length reward (alpha=2)
  # lets longer alive hypotheses still win: stopping on a wrong bound shows here.
  max_len, alpha, k, examples = 4, 2.0, 3, 2
  model = T5Transformer(TINY_VOCAB)
  params = _random_params(model, TINY_VOCAB.vocab_size, eos_scale=2.5)
  enc = _inputs(TINY_VOCAB.vocab_size)[:examples]
  tokens, scores = _jit(functools.partial(
      beam_search, model, beam_size=k, max_decode_length=max_len, alpha=alpha))(params, enc)
  for b in range(examples):
    ref_tokens, ref_scores = _reference_beam(model, params, enc[b], k, alpha, max_len)
    np.testing.assert_array_equal(tokens[b], ref_tokens)
    np.testing.assert_allclose(scores[b], ref_scores, atol=1e-5, rtol=1e-5)


def test_score_sequences_matches_manual_gather():
  model, params, enc, task_ids = _case("prompt")
  targets = np.random.RandomState(2).randint(2, model.config.vocab_size, (B, T))
  for b, n in enumerate([6, 3, 1, 4]):  # EOS at position n-1, then padding.
    targets[b, n - 1] = EOS
    targets[b, n:] = 0
  targets = targets.astype(np.int32)
  dec_inputs = np.concatenate([np.zeros((B, 1), np.int32), targets[:, :-1]], axis=1)
  logits = np.asarray(_forward(model, params, enc, dec_inputs, task_ids), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = [sum(logp[b, t, targets[b, t]] for t in range(T) if targets[b, t] != 0)
              for b in range(B)]
  got = _jitted("prompt", score_sequences)(params, enc, targets, task_ids=task_ids)
  assert got.shape == (B,)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_scores_see_the_prompt_and_task_ids():
  _, params, enc, task_ids = _case("prompt")
  targets = np.tile(np.array([5, 6, EOS, 0, 0, 0], np.int32), (B, 1))
  moved = dict(params, prompt={"prompt": params["prompt"]["prompt"] + 1.0})
  score = _jitted("prompt", score_sequences)
  before = np.asarray(score(params, enc, targets, task_ids=task_ids))
  after = np.asarray(score(moved, enc, targets, task_ids=task_ids))
  assert (np.abs(after - before) > 1e-4).all()
  # Rows 0 and 3 use task 0, rows 1 and 2 task 1: swapping the ids must change the scores.
  swapped = np.asarray(score(params, enc, targets, task_ids=1 - task_ids))
  assert (np.abs(swapped - before) > 1e-4).all()


def test_decoding_compiles_once():
  _, params, enc, task_ids = _case("prompt")
  greedy = _jitted("prompt", greedy_decode, max_decode_length=T)
  beam = _jitted("prompt", beam_search, beam_size=4, max_decode_length=T, alpha=0.6)
  other = jax.tree_util.tree_map(lambda x: x * 0.9, params)
  for fn in (greedy, beam):
    fn(params, enc, task_ids=task_ids)
    fn(other, enc[:, ::-1].copy(), task_ids=1 - task_ids)
    assert fn._cache_size() == 1
