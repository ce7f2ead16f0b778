"""Vocabularies chosen by name: `t5`, `mt5` (SentencePiece) and `byte`.

The SentencePiece model paths are configuration, resolved when a vocabulary is first used
(not when a task is registered), so `set_vocabulary_path` or the environment variables
below can point them at a local copy at any time before data is read:

  PROMPT_JAX_T5_VOCAB    T5 SentencePiece model (32000 pieces; 100 extra ids added)
  PROMPT_JAX_MT5_VOCAB   mT5 SentencePiece model (250000 pieces; 100 extra ids added)

Defaults are the public T5X bucket paths, read through `tf.io.gfile` like any other path.
Every task registered with one vocabulary name shares one vocabulary object, so SeqIO's
mixture check (all tasks use the same vocabulary) holds.
"""

from __future__ import annotations

import dataclasses
import os

import seqio

DEFAULT_T5_VOCAB = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
DEFAULT_MT5_VOCAB = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
EXTRA_IDS = 100


@dataclasses.dataclass(frozen=True)
class _SpmConfig:
  env_var: str
  default_path: str


_SPM_VOCABS = {
    "t5": _SpmConfig("PROMPT_JAX_T5_VOCAB", DEFAULT_T5_VOCAB),
    "mt5": _SpmConfig("PROMPT_JAX_MT5_VOCAB", DEFAULT_MT5_VOCAB),
}
VOCABULARY_NAMES = ("t5", "mt5", "byte")

_path_overrides: dict[str, str] = {}
_instances: dict[str, seqio.Vocabulary] = {}


class ConfigurableSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePiece vocabulary whose model path is looked up when first loaded."""

  def __init__(self, name: str):
    self._vocab_name = name
    super().__init__(vocabulary_path(name), extra_ids=EXTRA_IDS)

  def _refresh_path(self) -> None:
    path = vocabulary_path(self._vocab_name)
    if path != self._sentencepiece_model_file:
      self._sentencepiece_model_file = path
      self._model = None

  def _model_context(self):
    if self._model is None:
      self._refresh_path()
    return super()._model_context()

  @property
  def sentencepiece_model_file(self) -> str:
    self._refresh_path()
    return self._sentencepiece_model_file

  def __eq__(self, other):
    # Equal when they resolve to the same model, not when their load state matches.
    if not isinstance(other, ConfigurableSentencePieceVocabulary):
      return False
    return (self.sentencepiece_model_file == other.sentencepiece_model_file
            and self.extra_ids == other.extra_ids)

  def __hash__(self):
    return hash((self._vocab_name, self.extra_ids))


def vocabulary_path(name: str) -> str:
  """The SentencePiece model path configured for `name` ('t5' or 'mt5')."""
  if name not in _SPM_VOCABS:
    raise ValueError(f"No SentencePiece vocabulary named {name!r}; use one of "
                     f"{sorted(_SPM_VOCABS)}.")
  cfg = _SPM_VOCABS[name]
  return _path_overrides.get(name) or os.environ.get(cfg.env_var) or cfg.default_path


def set_vocabulary_path(name: str, path: str | os.PathLike | None) -> None:
  """Points vocabulary `name` at a SentencePiece model file (None restores the default).

  Takes effect for every registered task, including ones registered before the call.
  """
  vocabulary_path(name)  # Validates the name.
  if path is None:
    _path_overrides.pop(name, None)
  else:
    _path_overrides[name] = os.fspath(path)
  if name in _instances:
    _instances[name]._refresh_path()  # Drops a model loaded from the old path.


def get_vocabulary(name: str) -> seqio.Vocabulary:
  """The shared vocabulary object for `name` in VOCABULARY_NAMES."""
  if name not in VOCABULARY_NAMES:
    raise ValueError(f"Unknown vocabulary {name!r}; use one of {list(VOCABULARY_NAMES)}.")
  if name not in _instances:
    if name == "byte":
      _instances[name] = seqio.ByteVocabulary()
    else:
      _instances[name] = ConfigurableSentencePieceVocabulary(name)
  return _instances[name]


def output_features(name: str) -> dict[str, seqio.Feature]:
  """`inputs` / `targets` features tokenised by vocabulary `name`, EOS appended."""
  vocab = get_vocabulary(name)
  return {
      "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
  }
