"""Generation and rank-classification evaluation, with a fake scorer and a tiny T5."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import data as data_lib
from prompt_jax.train import evaluation
from prompt_jax.models import T5Transformer
from tests.data.data_helpers import mock_examples
from tests.data.conftest import local_vocabularies, prepared  # noqa: F401  (fixtures)
from tests.tiny import tiny_config


def _example(vocabulary, inputs, target, **extra):
  ids = np.array(vocabulary.encode(inputs) + [1], np.int32)
  return {"inputs": ids, "inputs_pretokenized": inputs.encode(),
          "targets_pretokenized": target.encode(), **extra}


def test_generation_mode_postprocesses_then_scores():
  vocabulary = data_lib.get_vocabulary("t5")
  examples = [_example(vocabulary, f"mrpc sentence1: {i} sentence2: {i}", t)
              for i, t in enumerate(["equivalent", "equivalent", "not_equivalent", "equivalent"])]
  result = evaluation.evaluate("glue_mrpc", examples, mode="generation",
                             predictions=["equivalent", b"not_equivalent", "not_equivalent",
                                          " equivalent "])
  # ' equivalent ' is no label (T5 compares exactly), so it is wrong: 2 of 4 right;
  # positive class: TP 1, FN 2 (the invalid one included), FP 0 -> F1 = 0.5.
  assert result.metrics == pytest.approx({"accuracy": 50.0, "f1": 50.0})
  assert result.targets[0] == "equivalent"


def test_generation_mode_for_wsc_and_stsb():
  vocabulary = data_lib.get_vocabulary("t5")
  wsc = [_example(vocabulary, "text: x", "Mark", span1_text=b"Mark", label=np.int64(1)),
         _example(vocabulary, "text: y", "Pete", span1_text=b"Pete", label=np.int64(0))]
  result = evaluation.score_predictions("super_glue_wsc_noprefix", wsc, ["mark", "Mark"])
  # Both right: 'mark' names the true referent; 'Mark' is not the wrong candidate 'Pete'.
  assert result.targets == [1, 0] and result.metrics == {"accuracy": 100.0}
  result = evaluation.score_predictions("super_glue_wsc_noprefix", wsc, ["mark", ""])
  assert result.metrics == {"accuracy": 50.0}  # An empty prediction is never right.
  stsb = [_example(vocabulary, "a", t) for t in ["1.0", "2.0", "3.0"]]
  result = evaluation.score_predictions("glue_stsb", stsb, ["1.2", "2.0", "2.8"])
  assert result.metrics["spearman_corrcoef"] == pytest.approx(100.0)


def _lookup_score_fn(table, calls):
  """Log-likelihood = table[(first input token, first target token)]."""

  def score_fn(inputs, targets):
    calls.append((inputs.shape, targets.shape))
    return np.array([table.get((int(x[0]), int(y[0])), -100.0) for x, y in zip(inputs, targets)])

  return score_fn


def test_rank_classify_picks_the_best_label_with_fixed_batch_shapes():
  vocabulary = data_lib.get_vocabulary("t5")
  labels = ("entailment", "not_entailment")
  first = [vocabulary.encode(label)[0] for label in labels]
  inputs = [[5, 1], [6, 7, 8, 1], [7, 1]]
  table = {(5, first[0]): -1.0, (5, first[1]): -2.0, (6, first[0]): -3.0,
           (6, first[1]): -0.5, (7, first[0]): -4.0, (7, first[1]): -4.5}
  calls = []
  predictions, scores = evaluation.rank_classify(
      inputs, labels, _lookup_score_fn(table, calls), vocabulary, batch_size=4)
  assert predictions == ["entailment", "not_entailment", "entailment"]
  np.testing.assert_allclose(scores, [[-1, -2], [-3, -0.5], [-4, -4.5]])
  target_len = max(len(vocabulary.encode(label)) + 1 for label in labels)
  assert calls == [((4, 4), (4, target_len))] * 2  # 6 pairs -> 2 full batches.


def test_rank_classification_mode_feeds_the_metrics():
  vocabulary = data_lib.get_vocabulary("t5")
  examples = [_example(vocabulary, "rte sentence1: a sentence2: b", "entailment"),
              _example(vocabulary, "rte sentence1: c sentence2: d", "entailment")]
  prefers_not = lambda x, y: np.where(y[:, 0] == vocabulary.encode("not_entailment")[0],
                                      -1.0, -2.0)
  result = evaluation.evaluate("glue_rte", examples, mode="rank_classification",
                             score_fn=prefers_not, batch_size=3)
  assert result.predictions == ["not_entailment", "not_entailment"]
  assert result.metrics == {"accuracy": 0.0}
  with pytest.raises(ValueError, match="declares no label strings"):
    evaluation.evaluate("squad", examples, mode="rank_classification", score_fn=prefers_not)


def _t5_log_likelihood(model, params, inputs, targets):
  """Sum of log p(target token) over non-padding target positions: [B]."""
  decoder_inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  logits = model.apply({"params": params}, inputs, decoder_inputs)  # [B, T, V]
  logp = jax.nn.log_softmax(logits, axis=-1)
  token_logp = jnp.take_along_axis(logp, targets[:, :, None], axis=-1)[:, :, 0]  # [B, T]
  return jnp.sum(jnp.where(targets > 0, token_logp, 0.0), axis=1)


@pytest.mark.slow
def test_rank_classification_with_a_tiny_t5_picks_the_most_likely_label():
  vocabulary = data_lib.get_vocabulary("byte")  # Ids < 259: a tiny embedding table.
  model = T5Transformer(tiny_config(vocab_size=300))
  tokens = jnp.ones((1, 1), jnp.int32)
  # Random weights from the parameter shapes (tracing only: one compile less than init).
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(3), tokens, tokens))
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), s.dtype),
                        shapes["params"])
  score_fn = jax.jit(functools.partial(_t5_log_likelihood, model, params))
  labels = data_lib.task_labels("super_glue_cb")
  inputs = [vocabulary.encode(text) + [1] for text in ["it rains", "no", "x y z"]]
  predictions, scores = evaluation.rank_classify(inputs, labels, score_fn, vocabulary,
                                                 batch_size=4)
  assert scores.shape == (3, 3) and np.all(np.isfinite(scores)) and np.all(scores < 0)
  # Reference: each (input, label) pair scored on its own (same shapes: no recompile), its
  # batch filled with unrelated rows, so a mix-up of pairs and scores would show.
  length, target_length = max(map(len, inputs)), max(len(label) + 1 for label in labels)
  filler_x = np.full((3, length), 7, np.int32)
  filler_y = np.full((3, target_length), 9, np.int32)
  for i, x in enumerate(inputs):
    alone = []
    for label in labels:
      x_row = np.zeros((1, length), np.int32)
      x_row[0, :len(x)] = x
      y = vocabulary.encode(label) + [1]
      y_row = np.zeros((1, target_length), np.int32)
      y_row[0, :len(y)] = y
      batch_x, batch_y = np.concatenate([x_row, filler_x]), np.concatenate([y_row, filler_y])
      alone.append(float(score_fn(batch_x, batch_y)[0]))
    np.testing.assert_allclose(scores[i], alone, rtol=1e-5, atol=1e-5)
    assert predictions[i] == labels[int(np.argmax(alone))]


def test_load_examples_reads_a_split_in_order(prepared):
  examples = [{"sentence1": f"s{i}.", "sentence2": "h.", "label": 0, "idx": i} for i in range(3)]
  with mock_examples({"validation": examples}):
    loaded = evaluation.load_examples("glue_rte_noprefix", "validation", max_examples=2)
  assert [ex["inputs_pretokenized"] for ex in loaded] == [b"sentence1: s0. sentence2: h.",
                                                          b"sentence1: s1. sentence2: h."]


def test_rank_classify_label_table_path_matches_the_pair_path():
  vocabulary = data_lib.get_vocabulary("t5")
  labels = ("entailment", "not_entailment")
  first = [vocabulary.encode(label)[0] for label in labels]
  inputs = [[5, 1], [6, 7, 8, 1], [7, 1]]
  table = {(5, first[0]): -1.0, (5, first[1]): -2.0, (6, first[0]): -3.0,
           (6, first[1]): -0.5, (7, first[0]): -4.0, (7, first[1]): -4.5}
  pair_fn = _lookup_score_fn(table, [])
  calls = []

  def label_fn(x, label_table):  # [B, L], [C, T] -> [B, C]
    calls.append((x.shape, label_table.shape))
    return np.stack([pair_fn(x, np.repeat(label_table[c:c + 1], len(x), 0))
                     for c in range(len(label_table))], axis=1)

  want = evaluation.rank_classify(inputs, labels, pair_fn, vocabulary, batch_size=4)
  got = evaluation.rank_classify(inputs, labels, None, vocabulary, batch_size=2,
                                 input_length=16, label_score_fn=label_fn,
                                 bucket_lengths=(2, 4, 8, 16))
  assert got[0] == want[0]
  np.testing.assert_array_equal(got[1], want[1])
  target_len = max(len(vocabulary.encode(label)) + 1 for label in labels)
  # 3 examples, 2 per call; each call padded to its own bucket (longest 4, then 2).
  assert calls == [((2, 4), (2, target_len)), ((2, 2), (2, target_len))]
  with pytest.raises(ValueError, match="score_fn or a label_score_fn"):
    evaluation.rank_classify(inputs, labels, None, vocabulary)


@pytest.mark.slow
def test_evaluator_rank_classification_equals_one_forward_per_pair():
  from prompt_jax.train import inputs as inputs_lib
  vocabulary = data_lib.get_vocabulary("t5")
  model = T5Transformer(tiny_config(vocab_size=32128))
  tokens = jnp.ones((1, 1), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(3), tokens, tokens))
  rng = np.random.default_rng(5)
  params = jax.tree.map(lambda s: np.asarray(rng.normal(0, 0.5, s.shape), np.float32),
                        shapes["params"])
  texts = ["rte sentence1: a sentence2: b", "rte sentence1: the cat sat on the mat sentence2: c",
           "rte sentence1: x sentence2: y z"]
  examples = [_example(vocabulary, t, "entailment") for t in texts]
  lengths = {"inputs": 32, "targets": 8}
  ev = evaluation.Evaluator(model, params, ["glue_rte"], split="", feature_lengths=lengths,
                            batch_size=2, mode="rank_classification",
                            examples={"glue_rte": examples},
                            buckets=inputs_lib.LengthBuckets(min_length=8))
  fast = ev.evaluate_task({}, "glue_rte")
  # The old path: one full forward pass per (example, label) pair, full-length padding.
  inputs = [np.asarray(ex["inputs"]).tolist() for ex in examples]
  _, slow = evaluation.rank_classify(inputs, data_lib.task_labels("glue_rte"),
                                     ev.score_fn({}, "glue_rte"), vocabulary, batch_size=4,
                                     input_length=lengths["inputs"])
  assert fast.scores.shape == (3, 2) and np.all(np.isfinite(fast.scores))
  np.testing.assert_allclose(fast.scores, slow, rtol=1e-5, atol=1e-5)
