"""Fixtures for the data tests: local vocabularies and prepared-data stubs."""

from __future__ import annotations

import pathlib

import pytest

from prompt_jax.data import sources, vocab

T5_SPM = (pathlib.Path(__file__).resolve().parents[3] / "shared" / "testdata" / "t5_vocab"
          / "spiece.model")


@pytest.fixture(autouse=True, scope="session")
def local_vocabularies():
  """Both SentencePiece vocabularies read the local T5 model (no mT5 model offline)."""
  if not T5_SPM.exists():
    pytest.fail(f"Shared fixture missing: {T5_SPM}")
  vocab.set_vocabulary_path("t5", T5_SPM)
  vocab.set_vocabulary_path("mt5", T5_SPM)
  yield
  vocab.set_vocabulary_path("t5", None)
  vocab.set_vocabulary_path("mt5", None)


@pytest.fixture
def prepared(monkeypatch):
  """Every TFDS dataset counts as prepared (the mock serves the data)."""
  monkeypatch.setattr(sources, "dataset_is_prepared", lambda name, data_dir: True)
  sources._prepared_cache.clear()
  yield
  sources._prepared_cache.clear()
