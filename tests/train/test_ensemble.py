"""One-pass prompt ensembling: the votes by hand, and one pass == N separate evaluations."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import data as data_lib
from prompt_jax.data import skill_gym as gym
from prompt_jax.models import T5Transformer, decoding
from prompt_jax.prompts import Prompt, initializers
from prompt_jax.train import builder, ensemble, evaluation, partitioning
from tests.data.conftest import local_vocabularies  # noqa: F401  (fixture)
from tests.tiny import tiny_config

GYM_TASK = "skill_gym_reverse_noword"
P = 3


def test_label_vote_by_hand():
  # Three members, two examples, labels (a, b, c).
  scores = np.array([
      [[-1.0, -2.0, -3.0], [-5.0, -1.0, -2.0]],   # member 0 votes a, b
      [[-2.0, -1.0, -3.0], [-5.0, -1.5, -2.0]],   # member 1 votes b, b
      [[-0.5, -9.0, -3.0], [-0.1, -9.0, -8.0]],   # member 2 votes a, a
  ])
  # Example 0: a has 2 votes. Example 1: b has 2 votes though a has the best summed score.
  np.testing.assert_array_equal(ensemble.vote_labels(scores), [0, 1])
  # Summed log-likelihood: example 0 a=-3.5 b=-12 c=-9; example 1 a=-10.1 b=-11.5 c=-12.
  np.testing.assert_array_equal(ensemble.vote_labels(scores, "loglik"), [0, 0])
  # A 1-1 tie between a and b (two members): the higher summed score (b: -3 vs a: -3.5) wins.
  tie = np.array([[[-1.0, -1.5]], [[-2.5, -1.5]]])  # Member 0 votes a, member 1 votes b.
  assert ensemble.vote_labels(tie).tolist() == [1]
  with pytest.raises(ValueError, match="Unknown ensemble vote"):
    ensemble.vote_labels(scores, "mean")


def test_generation_vote_by_hand():
  # [M=4][E=3] postprocessed values.
  keys = [["x", "p", "u"], ["y", "q", "u"], ["x", "q", "v"], ["y", "r", "w"]]
  # Example 0: x (members 0, 2) vs y (1, 3) tie -> scored; example 1: q has 2 votes;
  # example 2: u has 2 votes.
  assert ensemble.candidates_to_score(keys, "majority") == [[0, 1], [], []]
  assert ensemble.vote_generation(keys, {(0, 0): -4.0, (0, 1): -3.0}) == [1, 1, 0]
  assert ensemble.vote_generation(keys, {(0, 0): -3.0, (0, 1): -3.0}) == [0, 1, 0]
  # loglik: every distinct value of an example is a candidate (first voters, tally order).
  assert ensemble.candidates_to_score(keys, "loglik") == [[0, 1], [1, 0, 3], [0, 2, 3]]
  summed = {(0, 0): -1.0, (0, 1): -2.0, (1, 1): -9.0, (1, 0): -1.0, (1, 3): -5.0,
            (2, 0): -7.0, (2, 2): -6.0, (2, 3): -8.0}
  assert ensemble.vote_generation(keys, summed, "loglik") == [0, 0, 2]
  # Unhashable postprocessed values (dicts) still vote.
  assert ensemble.vote_key({"a": [1]}) == ensemble.vote_key({"a": [1]})


def test_prompt_files_from_a_dir_and_shape_checks(tmp_path):
  for name in ("b", "a"):
    np.save(tmp_path / f"{name}.npy", np.zeros((P, 8), np.float32))
  files = ensemble.resolve_prompt_files(str(tmp_path))
  assert [f.name for f in files] == ["a.npy", "b.npy"]
  assert ensemble.load_members(files).shape == (2, P, 8)
  np.save(tmp_path / "c.npy", np.zeros((P + 1, 8), np.float32))
  with pytest.raises(initializers.PromptFileError, match="share one shape"):
    ensemble.load_members(ensemble.resolve_prompt_files(str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="nope.npy"):
    ensemble.resolve_prompt_files([str(tmp_path / "nope.npy")])
  assert ensemble.row_ids(2, 3, task_id=1, tasks_per_member=2).tolist() == [1, 3, 5, 1, 3, 5]


def _random_model(vocab_size, seed=0):
  config = tiny_config(vocab_size=vocab_size)
  tokens = jnp.ones((1, 1), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(T5Transformer(config).init, jax.random.PRNGKey(0),
                                   tokens, tokens))["params"]
  rng = np.random.default_rng(seed)
  frozen = jax.tree.map(lambda s: np.asarray(rng.normal(0, 0.7, s.shape), np.float32), shapes)
  return config, frozen


def _members(n, d, seed=1):
  return np.random.default_rng(seed).normal(0, 2.0, (n, P, d)).astype(np.float32)


def _single(config, frozen, task, exs, lengths, prompt, mode="generation"):
  ev = evaluation.Evaluator(T5Transformer(config, prompt=Prompt(P)), frozen, [task], split="",
                            feature_lengths=lengths, batch_size=8, mode=mode,
                            examples={task: exs})
  return ev.evaluate_task({"prompt": {"prompt": prompt}}, task)


@pytest.fixture(scope="module")
def gym_setup():
  config, frozen = _random_model(gym.GYM_VOCAB_SIZE)
  rows = gym.examples("reverse", "validation", 12, with_word=False, max_len=5)
  exs = [{"inputs": np.asarray(gym.VOCAB.encode(r["inputs"]) + [1], np.int32),
          "inputs_pretokenized": r["inputs"].encode(),
          "targets_pretokenized": r["targets"].encode()} for r in rows]
  lengths = {"inputs": 8, "targets": 4}
  return config, frozen, exs, lengths


def test_identical_members_equal_the_single_prompt(gym_setup):
  config, frozen, exs, lengths = gym_setup
  p = _members(1, config.d_model)[0]
  single = _single(config, frozen, GYM_TASK, exs, lengths, p)
  ens = ensemble.EnsembleEvaluator(config, frozen, np.stack([p, p, p]), [GYM_TASK],
                                   feature_lengths=lengths, batch_size=8,
                                   examples={GYM_TASK: exs})
  result = ens.evaluate_task(GYM_TASK)
  assert result.ensemble.predictions == single.predictions
  assert result.ensemble.metrics == single.metrics
  metrics = result.metrics()
  for key in ("members_mean/exact_match", "members_best/exact_match", "member_2/exact_match"):
    assert metrics[key] == single.metrics["exact_match"]


def test_one_pass_equals_separate_evals_and_the_vote(gym_setup, tmp_path):
  config, frozen, exs, lengths = gym_setup
  members = _members(3, config.d_model, seed=5)
  separate = [_single(config, frozen, GYM_TASK, exs, lengths, p) for p in members]
  ens = ensemble.EnsembleEvaluator(config, frozen, members, [GYM_TASK],
                                   feature_lengths=lengths, batch_size=8,
                                   examples={GYM_TASK: exs})
  metrics, results = ens(str(tmp_path), "eval")
  result = results[GYM_TASK]
  for one, alone in zip(result.members, separate):
    assert one.predictions == alone.predictions and one.metrics == alone.metrics
  disagree = [e for e in range(len(exs))
              if len({r.predictions[e].strip() for r in separate}) > 1]
  assert disagree, "random prompts should disagree somewhere (else the vote is untested)"
  # The vote, recomputed from the separate evaluations: a strict majority wins outright;
  # a three-way split goes to the output with the best log-likelihood summed over members,
  # each member's greedy tokens decoded and scored on their own by single-prompt models.
  single = T5Transformer(config, prompt=Prompt(P))
  x = evaluation._pad([ex["inputs"] for ex in exs], lengths["inputs"])
  params = [{**frozen, "prompt": {"prompt": p}} for p in members]
  decode = jax.jit(functools.partial(decoding.greedy_decode, single, max_decode_length=4))
  score_fn = jax.jit(functools.partial(decoding.score_sequences, single))
  tokens = [np.asarray(decode(q, x)) for q in params]
  score = lambda q, y: np.asarray(score_fn(q, x, y))  # [E]
  summed = {m: sum(score(q, tokens[m]) for q in params) for m in range(3)}  # m -> [E]
  three_way = 0
  for e in range(len(exs)):
    values = [r.predictions[e].strip() for r in separate]
    counts = {v: values.count(v) for v in values}
    if max(counts.values()) > 1:
      expected = max(counts, key=counts.get)
    else:
      three_way += 1
      expected = values[int(np.argmax([summed[m][e] for m in range(3)]))]
    assert result.ensemble.predictions[e].strip() == expected, e
  assert three_way, "no three-way split: the log-likelihood tie rule went untested"
  assert metrics[f"{GYM_TASK}/members_mean/exact_match"] == pytest.approx(
      np.mean([r.metrics["exact_match"] for r in separate]))
  lines = (tmp_path / "inference" / f"{GYM_TASK}-eval.jsonl").read_text().splitlines()
  first = json.loads(lines[0])
  assert first["members"] == [r.predictions[0] for r in separate]
  assert first["prediction"] == result.ensemble.predictions[0]


def test_on_a_mesh_equals_one_device_and_keeps_the_weights_sharded(gym_setup):
  config, frozen, exs, lengths = gym_setup
  members = _members(3, config.d_model, seed=5)
  mesh = builder.make_mesh(2)  # (data 4, model 2) on the 8 emulated devices.
  shardings = partitioning.shardings_for(builder.abstract_params(T5Transformer(config)), mesh)
  kwargs = dict(feature_lengths=lengths, batch_size=8, examples={GYM_TASK: exs})
  on_mesh = ensemble.EnsembleEvaluator(config, jax.device_put(frozen, shardings), members,
                                       [GYM_TASK], mesh=mesh, **kwargs)
  alone = ensemble.EnsembleEvaluator(config, frozen, members, [GYM_TASK], **kwargs)
  got, want = on_mesh.evaluate_task(GYM_TASK), alone.evaluate_task(GYM_TASK)
  assert [r.predictions for r in got.members] == [r.predictions for r in want.members]
  assert got.ensemble.predictions == want.ensemble.predictions
  np.testing.assert_allclose(on_mesh.label_scores(GYM_TASK, ["ab", "ba"]),
                             alone.label_scores(GYM_TASK, ["ab", "ba"]), rtol=1e-5, atol=1e-5)
  embedding = on_mesh.params["token_embedder"]["embedding"]
  assert embedding.sharding.spec == shardings["token_embedder"]["embedding"].spec
  assert not embedding.sharding.is_fully_replicated
  assert on_mesh.params["prompt"]["prompt"].sharding.is_fully_replicated


@pytest.mark.parametrize("vote", ["majority", "loglik"])
def test_rank_classification_one_pass_equals_separate(vote):
  vocabulary = data_lib.get_vocabulary("t5")
  config, frozen = _random_model(32128, seed=2)
  exs = [{"inputs": np.asarray(vocabulary.encode(f"sentence1: {w} sentence2: b") + [1],
                               np.int32),
          "inputs_pretokenized": f"sentence1: {w}".encode(),
          "targets_pretokenized": t.encode()}
         for w, t in [("a", "entailment"), ("rain", "not_entailment"), ("x y", "entailment"),
                      ("no", "not_entailment"), ("cat", "entailment")]]
  lengths = {"inputs": 16, "targets": 4}
  task = "glue_rte_noprefix"
  members = _members(3, config.d_model, seed=7)
  separate = [_single(config, frozen, task, exs, lengths, p, mode="rank_classification")
              for p in members]
  ens = ensemble.EnsembleEvaluator(config, frozen, members, [task], feature_lengths=lengths,
                                   batch_size=8, mode="rank_classification", vote=vote,
                                   examples={task: exs})
  result = ens.evaluate_task(task)
  scores = np.stack([r.scores for r in separate])  # [M, E, C]
  for one, alone in zip(result.members, separate):
    assert one.predictions == alone.predictions
    np.testing.assert_allclose(one.scores, alone.scores, rtol=1e-5, atol=1e-5)
  labels = evaluation.task_labels(task)
  assert result.ensemble.predictions == [labels[j] for j in ensemble.vote_labels(scores, vote)]
