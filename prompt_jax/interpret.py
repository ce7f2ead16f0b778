"""`prompt-jax neighbours`: the nearest vocabulary tokens of every prompt vector (cosine).

Lester et al. (2021, Section 7) read a tuned prompt by the nearest neighbours of each prompt
vector among the frozen model's token embeddings, by cosine similarity, and observe that
with class-label initialisation the labels often persist as neighbours. This module does
that for any prompt file and any of the library's vocabularies (T5 / mT5 SentencePiece, the
skill gym's bytes):

  prompt-jax neighbours --gin_file=runs/prompt_neighbours.gin \
    --gin.MODEL_DIR="'/tmp/rte_nn'" --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_noprefix'" \
    --gin.INITIAL_CHECKPOINT_PATH="'/path/to/checkpoint'" \
    --gin.PROMPT_FILE="'/tmp/rte/prompts/prompt_30000.npy'" [--gin.NEIGHBOURS_K=5]

prints one table row per prompt vector (its k nearest tokens and their similarities) and a
summary of how many rows have a class-label token among their k neighbours, and writes
`MODEL_DIR/neighbours.json`. The labels are `CLASS_LABELS` if set, else the task's label
strings (none for generation tasks). A label's tokens are its sub-tokens in the task's
vocabulary, without SentencePiece's bare word-boundary piece "▁" (a neighbour of everything).

The candidates are the vocabulary's ids (`vocab_size`; rows of a padded embedding table
beyond it are no tokens). Similarities are cosine (a row scaled by any positive factor has the
same neighbours); ties go to the lower id.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import gin
import numpy as np
import seqio

Array = np.ndarray
_EPS = 1e-12  # Zero rows: similarity 0 to everything instead of NaN.


def _unit(x: Array) -> Array:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def cosine_neighbours(prompt: Array, embedding: Array, k: int, *, num_tokens: int | None = None,
                      chunk: int = 32768) -> tuple[Array, Array]:
  """The k most cosine-similar embedding rows of every prompt row.

  Args:
    prompt: [P, D] prompt vectors.
    embedding: [V, D] the model's input embedding table.
    k: neighbours per row (at most `num_tokens`).
    num_tokens: only ids < this are candidates (default V).
    chunk: embedding rows compared at once (bounds memory for 250k-token vocabularies).

  Returns:
    (ids [P, k] int64, similarities [P, k] float32), most similar first; ties to lower ids.
  """
  num_tokens = embedding.shape[0] if num_tokens is None else min(num_tokens, embedding.shape[0])
  if prompt.ndim != 2 or embedding.ndim != 2 or prompt.shape[1] != embedding.shape[1]:
    raise ValueError(f"prompt [P, D] and embedding [V, D] must share D; got {prompt.shape} "
                     f"and {embedding.shape}.")
  if not 1 <= k <= num_tokens:
    raise ValueError(f"k must be in 1..{num_tokens}, got {k}.")
  p = _unit(prompt)
  best_ids = np.zeros((p.shape[0], 0), np.int64)
  best_sims = np.zeros((p.shape[0], 0), np.float32)
  for start in range(0, num_tokens, chunk):
    stop = min(start + chunk, num_tokens)
    sims = p @ _unit(embedding[start:stop]).T  # [P, c]
    ids = np.broadcast_to(np.arange(start, stop), sims.shape)
    all_sims = np.concatenate([best_sims, sims], axis=1)
    all_ids = np.concatenate([best_ids, ids], axis=1)
    # Stable sort: among equal similarities the earlier column, i.e. the lower id, wins.
    order = np.argsort(-all_sims, axis=1, kind="stable")[:, :k]
    best_sims = np.take_along_axis(all_sims, order, axis=1)
    best_ids = np.take_along_axis(all_ids, order, axis=1)
  return best_ids, best_sims


def token_text(vocabulary: seqio.Vocabulary, token_id: int) -> str:
  """A readable name for one id: the SentencePiece piece, or the byte (as `\\xNN` if unprintable)."""
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return vocabulary.tokenizer.id_to_piece(int(token_id))
  if isinstance(vocabulary, seqio.ByteVocabulary):
    specials = {0: "<pad>", 1: "</s>", 2: "<unk>"}
    if token_id in specials:
      return specials[token_id]
    b = int(token_id) - 3
    return chr(b) if 32 < b < 127 else f"\\x{b:02x}"
  return vocabulary.decode([int(token_id)])


def label_tokens(vocabulary: seqio.Vocabulary, labels: Sequence[str]) -> dict[str, set[int]]:
  """Each label's sub-token ids, without the bare word-boundary piece."""
  out = {}
  for label in labels:
    ids = set(vocabulary.encode(label))
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
      ids = {i for i in ids if vocabulary.tokenizer.id_to_piece(i) != "\u2581"}
    out[label] = ids
  return out


@dataclasses.dataclass
class Neighbours:
  """Nearest tokens of every prompt row, and which rows sit near a class label."""
  ids: Array  # [P, k]
  similarities: Array  # [P, k]
  tokens: list[list[str]]
  labels: dict[str, set[int]]

  def near_label(self) -> list[list[str]]:
    """Per row, the labels that have a token among its k neighbours."""
    return [[label for label, ids in self.labels.items() if ids & set(row.tolist())]
            for row in self.ids]

  def summary(self) -> dict[str, Any]:
    near = self.near_label()
    first = [[label for label, ids in self.labels.items() if int(row[0]) in ids]
             for row in self.ids]
    return {"rows": len(self.ids), "k": int(self.ids.shape[1]),
            "labels": sorted(self.labels),
            "rows_near_a_label": sum(bool(n) for n in near),
            "rows_nearest_is_a_label_token": sum(bool(f) for f in first),
            "rows_near_each_label": {label: sum(label in n for n in near)
                                     for label in sorted(self.labels)}}

  def to_json(self) -> dict[str, Any]:
    near = self.near_label()
    return {"summary": self.summary(),
            "rows": [{"row": i, "near_labels": near[i],
                      "neighbours": [{"id": int(t), "token": s, "cosine": float(c)}
                                     for t, s, c in zip(self.ids[i], self.tokens[i],
                                                        self.similarities[i])]}
                     for i in range(len(self.ids))]}

  def format_table(self) -> str:
    lines = ["row | nearest tokens (cosine)"]
    for i, (toks, sims) in enumerate(zip(self.tokens, self.similarities)):
      lines.append(f"{i:>3} | " + "  ".join(f"'{t}' {s:.3f}" for t, s in zip(toks, sims)))
    s = self.summary()
    if s["labels"]:
      per = ", ".join(f"{label!r}: {n}" for label, n in s["rows_near_each_label"].items())
      lines.append(f"{s['rows_near_a_label']} of {s['rows']} rows have a class-label token "
                   f"among their {s['k']} nearest ({per}); "
                   f"{s['rows_nearest_is_a_label_token']} have one as the nearest.")
    else:
      lines.append("No class labels (the task declares none; set CLASS_LABELS to count them).")
    return "\n".join(lines)


def prompt_neighbours(prompt: Array, embedding: Array, vocabulary: seqio.Vocabulary, k: int,
                      labels: Sequence[str] = ()) -> Neighbours:
  """`cosine_neighbours` over the vocabulary's ids, with token names and label tokens."""
  ids, sims = cosine_neighbours(prompt, embedding, k, num_tokens=vocabulary.vocab_size)
  tokens = [[token_text(vocabulary, t) for t in row] for row in ids.tolist()]
  return Neighbours(ids, sims, tokens, label_tokens(vocabulary, labels))


def _task_vocabulary(name: str) -> seqio.Vocabulary:
  from prompt_jax import runs
  from prompt_jax.data import registry  # noqa: F401  Registers the benchmark tasks.
  from prompt_jax.data import skill_gym  # noqa: F401  Registers the skill-gym tasks.
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    raise runs.UserError(f"Unknown task or mixture {name!r} (MIXTURE_OR_TASK_NAME); "
                         "`prompt-jax tasks` lists them.") from None
  return provider.output_features["targets"].vocabulary


def _labels(name: str, class_labels: Sequence[str] | None) -> tuple[str, ...]:
  if class_labels is not None:
    return tuple(class_labels)
  from prompt_jax.train import evaluation
  from prompt_jax.train import inputs
  found: list[str] = []
  for task in inputs.task_names(name):
    found += [label for label in evaluation.task_labels(task) or () if label not in found]
  return tuple(found)


@gin.configurable
def neighbours(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
               initial_checkpoint_path: str = gin.REQUIRED, prompt_file: str = gin.REQUIRED,
               k: int = 5, class_labels: Sequence[str] | None = None,
               tfds_data_dir: str | None = None) -> Neighbours:
  """Nearest tokens of `PROMPT_FILE`'s rows; `MODEL_DIR/neighbours.json` (see module doc).

  A [T, P, D] per-task file is read as T * P rows (row t * P + p). `tfds_data_dir` is
  accepted for the CLI's `--tfds_data_dir` and unused (only the vocabulary is read).
  """
  del tfds_data_dir
  from prompt_jax import checks, runs
  from prompt_jax.prompts import initializers
  from prompt_jax.train import checkpointing, run_dir
  checks.positive_int("NEIGHBOURS_K", k)
  if not prompt_file:
    raise runs.UserError("PROMPT_FILE is not set (--gin.PROMPT_FILE=path/to/prompt.npy).")
  vocabulary = _task_vocabulary(mixture_or_task_name)
  labels = _labels(mixture_or_task_name, class_labels)
  prompt = initializers.load_npy_prompt(prompt_file)
  run_dir.refuse_training_dir(model_dir, "neighbours")
  runs.check_checkpoint_path(initial_checkpoint_path)
  runs.write_config(model_dir)
  _, params = runs._load(initial_checkpoint_path, runs.architecture())
  embedding = np.asarray(params["token_embedder"]["embedding"], np.float32)
  rows = prompt.reshape(-1, prompt.shape[-1])
  if rows.shape[1] != embedding.shape[1]:
    raise runs.UserError(f"Prompt file {prompt_file} has shape {prompt.shape}; the model's "
                         f"embeddings have D = {embedding.shape[1]}.")
  if k > min(vocabulary.vocab_size, embedding.shape[0]):
    raise runs.UserError(f"NEIGHBOURS_K={k} exceeds the {vocabulary.vocab_size} tokens.")
  result = prompt_neighbours(rows, embedding, vocabulary, k, labels)
  checkpointing.write_json(pathlib.Path(model_dir) / "neighbours.json",
                           {"prompt_file": str(prompt_file), "checkpoint":
                            str(initial_checkpoint_path), **result.to_json()})
  return result
