"""`prompt-jax neighbours`: cosine nearest tokens of prompt rows, labels counted."""

import json

import numpy as np
import pytest

from prompt_jax import cli, interpret
from prompt_jax.checkpoints import load_pretrained
from prompt_jax.data import skill_gym as gym
from prompt_jax.data import vocab as vocab_lib
from tests.conftest import T5X_TINY
from tests.data.conftest import local_vocabularies  # noqa: F401  (fixture)


def _table(v=50, d=6, seed=0):
  return np.random.default_rng(seed).normal(size=(v, d)).astype(np.float32)


def test_copied_rows_come_first_and_scale_does_not_matter():
  emb = _table()
  emb[0] *= 100.0  # A long row: the top dot product of most vectors, rarely the top cosine.
  rows = [7, 3, 42]
  ids, sims = interpret.cosine_neighbours(emb[rows], emb, 4)
  assert ids[:, 0].tolist() == rows
  np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-6)
  assert np.all(np.diff(sims, axis=1) <= 0)
  scaled = emb[rows] * np.array([[0.01], [5.0], [300.0]], np.float32)
  ids_scaled, sims_scaled = interpret.cosine_neighbours(scaled, emb, 4)
  np.testing.assert_array_equal(ids_scaled, ids)
  np.testing.assert_allclose(sims_scaled, sims, atol=1e-6)
  # A dot product would rank the long row 0 first for some copied rows: cosine does not.
  dot_first = np.argmax(emb[rows] @ emb.T, axis=1)
  assert 0 in dot_first.tolist() and 0 not in ids[:, 0].tolist()
  # Chunked over the vocabulary (7 rows at a time) = all at once; candidates limited to ids < 40.
  chunked = interpret.cosine_neighbours(scaled, emb, 4, chunk=7)
  np.testing.assert_array_equal(chunked[0], ids)
  limited, _ = interpret.cosine_neighbours(emb[[42]], emb, 3, num_tokens=40)
  assert limited.max() < 40 and 42 not in limited
  with pytest.raises(ValueError, match="k must be"):
    interpret.cosine_neighbours(emb[rows], emb, 0)


def test_token_names_and_label_rows_for_sentencepiece_and_bytes():
  t5 = vocab_lib.get_vocabulary("t5")
  assert interpret.token_text(t5, t5.encode("entailment")[1]) == "en"
  assert interpret.token_text(t5, 32099).endswith("<extra_id_0>")  # seqio: "▁<extra_id_0>".
  # mT5's vocabulary takes the same SentencePiece path (offline it reads the T5 model file).
  mt5 = vocab_lib.get_vocabulary("mt5")
  assert interpret.token_text(mt5, mt5.encode("entailment")[1]) == "en"
  assert interpret.token_text(gym.VOCAB, 3 + ord("r")) == "r"
  assert interpret.token_text(gym.VOCAB, 3 + 10) == "\\x0a"
  labels = interpret.label_tokens(t5, ["entailment"])["entailment"]
  assert 3 not in labels and labels == set(t5.encode("entailment")) - {3}  # No bare "▁".
  emb = _table(v=32128, d=8, seed=1)
  ids = sorted(labels)
  prompt = np.concatenate([emb[ids[:2]], _table(v=2, d=8, seed=9)])
  result = interpret.prompt_neighbours(prompt, emb, t5, 3, ["entailment", "not_entailment"])
  summary = result.summary()
  assert summary["rows"] == 4 and summary["rows_nearest_is_a_label_token"] >= 2
  assert result.near_label()[0] and result.near_label()[1]
  assert "rows have a class-label token" in result.format_table()


@pytest.mark.parametrize("task,labels,vocab_size", [
    ("glue_rte_noprefix", None, 32100),
    ("skill_gym_reverse_noword", "['reverse']", gym.VOCAB.vocab_size),
])
def test_cli_neighbours_on_the_t5x_tiny_checkpoint(tmp_path, capsys, task, labels, vocab_size):
  _, params = load_pretrained(T5X_TINY)
  emb = np.asarray(params["token_embedder"]["embedding"])
  vocabulary = (vocab_lib.get_vocabulary("t5") if vocab_size == 32100 else gym.VOCAB)
  label = "entailment" if labels is None else "reverse"
  token = sorted(interpret.label_tokens(vocabulary, [label])[label])[0]
  np.save(tmp_path / "p.npy", np.stack([emb[token] * 3.0, emb[5], emb[token + 1]]))
  argv = ["neighbours", "--gin_file=runs/prompt_neighbours.gin",
          f"--gin.MODEL_DIR='{tmp_path / 'nn'}'", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY}'",
          f"--gin.PROMPT_FILE='{tmp_path / 'p.npy'}'", "--gin.NEIGHBOURS_K=3"]
  if labels:
    argv.append(f"--gin.CLASS_LABELS={labels}")
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  report = json.loads((tmp_path / "nn" / "neighbours.json").read_text())
  rows = report["rows"]
  assert [r["neighbours"][0]["id"] for r in rows] == [token, 5, token + 1]
  assert all(n["id"] < vocab_size for r in rows for n in r["neighbours"])
  assert report["summary"]["rows_near_a_label"] >= 1 and label in rows[0]["near_labels"]
  assert "rows have a class-label token" in out
  bad_k = [a for a in argv if "NEIGHBOURS_K" not in a] + ["--gin.NEIGHBOURS_K=0"]
  assert cli.main(bad_k) == 2 and "NEIGHBOURS_K" in capsys.readouterr().err
