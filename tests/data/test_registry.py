"""Registry: names, vocabulary variants, listing, the fast unprepared-data error, prepare."""

import importlib
import time

import pytest
import seqio

from prompt_jax import data as data_lib
from prompt_jax.data import registry, sources, vocab


def test_import_registers_the_benchmarks_idempotently():
  before = set(registry.task_names())
  for name in ("glue_rte", "glue_rte_noprefix", "super_glue_wsc_noprefix", "dept_cb",
               "xnli_ur", "mrqa_textbook_qa", "squad", "transfer_qqp_as_mrpc"):
    assert name in before
    assert name in seqio.TaskRegistry.names()
  for name in ("glue", "super_glue_8", "dept13_noprefix", "xnli_zeroshot", "mrqa_transfer"):
    assert name in seqio.MixtureRegistry.names()
  importlib.reload(data_lib)
  assert set(registry.task_names()) == before


def test_vocabulary_variants_are_registered_on_request():
  assert "glue_cola_byte" not in seqio.TaskRegistry.names()
  task = data_lib.get_mixture_or_task("glue_cola_byte")
  assert isinstance(task.output_features["targets"].vocabulary, seqio.ByteVocabulary)
  mixture = data_lib.get_mixture_or_task("super_glue_8_noprefix_mt5")
  assert all(t.name.endswith("_noprefix_mt5") for t in mixture.tasks)
  assert mixture.tasks[0].output_features["inputs"].vocabulary is vocab.get_vocabulary("mt5")
  assert data_lib.task_labels("glue_cola_byte") == ("unacceptable", "acceptable")
  with pytest.raises(KeyError, match="glue_rte"):
    data_lib.get_mixture_or_task("glue_rtee")


def test_vocabulary_paths_are_resolved_when_used(tmp_path):
  t5 = vocab.get_vocabulary("t5")
  assert t5.vocab_size == 32100
  original = vocab.vocabulary_path("t5")
  vocab.set_vocabulary_path("t5", tmp_path / "elsewhere.model")
  try:
    assert t5.sentencepiece_model_file == str(tmp_path / "elsewhere.model")
  finally:
    vocab.set_vocabulary_path("t5", original)
  assert t5.vocab_size == 32100
  assert vocab.DEFAULT_MT5_VOCAB.startswith("gs://")
  with pytest.raises(ValueError, match="Unknown vocabulary"):
    vocab.get_vocabulary("bpe")


def test_tfds_datasets_of_tasks_and_mixtures():
  assert data_lib.tfds_datasets_for("glue_mnli_mismatched_noprefix") == ("glue/mnli:2.0.0",)
  assert data_lib.tfds_datasets_for("transfer_mrpc_to_qqp") == ("glue/mrpc:2.0.0",
                                                                "glue/qqp:2.0.0")
  assert data_lib.tfds_datasets_for("xnli_zeroshot") == ("glue/mnli:2.0.0", "xnli:1.1.0")
  assert len(data_lib.tfds_datasets_for("super_glue_8")) == 8


def test_list_tasks_reports_preparation(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "dataset_is_prepared",
                      lambda name, data_dir: name.startswith("glue/rte"))
  rows = {r.name: r for r in data_lib.list_tasks(str(tmp_path))}
  assert rows["glue_rte"].prepared is True and rows["glue_rte"].kind == "task"
  assert rows["glue_cola"].prepared is False
  assert rows["glue"].kind == "mixture" and rows["glue"].prepared is False
  table = data_lib.format_task_list(list(rows.values()))
  assert any(line.split()[:4] == ["glue_rte", "task", "t5", "yes"] for line in table.splitlines())


def test_unprepared_data_fails_fast_with_the_prepare_command(tmp_path):
  sources._prepared_cache.clear()
  start = time.monotonic()
  with pytest.raises(data_lib.DataNotPreparedError) as err:
    data_lib.check_prepared("super_glue_8_noprefix", str(tmp_path))
  assert time.monotonic() - start < 10
  message = str(err.value)
  assert "super_glue/boolq:1.0.2" in message
  assert f"prompt-jax prepare super_glue_8_noprefix --tfds_data_dir={tmp_path}" in message
  assert err.value.command == f"prompt-jax prepare super_glue_8_noprefix --tfds_data_dir={tmp_path}"


def test_reading_an_unprepared_task_fails_fast(tmp_path):
  sources._prepared_cache.clear()
  sources.set_tfds_data_dir(str(tmp_path))
  try:
    start = time.monotonic()
    task = data_lib.get_mixture_or_task("glue_rte")
    with pytest.raises(data_lib.DataNotPreparedError, match="glue/rte:2.0.0") as err:
      task.get_dataset(sequence_length=None, split="validation", shuffle=False)
    assert time.monotonic() - start < 10
    assert f"prompt-jax prepare glue_rte --tfds_data_dir={tmp_path}" in str(err.value)
  finally:
    sources.set_tfds_data_dir(None)


def test_prepare_downloads_every_dataset_of_a_mixture(tmp_path, monkeypatch):
  calls = []

  class FakeBuilder:
    def __init__(self, name, data_dir):
      self.name, self.data_dir = name, data_dir

    def is_prepared(self):
      return self.name == "glue/qqp:2.0.0"

    def download_and_prepare(self):
      calls.append((self.name, self.data_dir))

  monkeypatch.setattr(registry.tfds, "builder", FakeBuilder)
  done = data_lib.prepare("transfer_qqp_to_mrpc", str(tmp_path))
  assert done == ["glue/qqp:2.0.0", "glue/mrpc:2.0.0"]
  assert calls == [("glue/mrpc:2.0.0", str(tmp_path))]
