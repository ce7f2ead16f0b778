"""XNLI, SIB-200 (from a TSV fixture), per-language tables, MRQA and QQP <-> MRPC transfer."""

import csv

import pytest

from prompt_jax import data as data_lib
from prompt_jax.data import xlingual
from tests.data.data_helpers import mock_examples, run_task, texts


def _xnli_example(label):
  langs = xlingual.XNLI_LANGUAGES
  return {"premise": {lang: f"P-{lang}" for lang in langs},
          # TFDS orders hypotheses by language; shuffle here to test the lookup.
          "hypothesis": {"language": list(reversed(langs)),
                         "translation": [f"H-{lang}" for lang in reversed(langs)]},
          "label": label}


def test_xnli_selects_one_language(prepared):
  with mock_examples({"test": [_xnli_example(1), _xnli_example(2)]}):
    german = run_task("xnli_de", "test")
    swahili = run_task("xnli_sw_t5", "test")
  assert texts(german) == [("hypothesis: H-de premise: P-de", "neutral"),
                           ("hypothesis: H-de premise: P-de", "contradiction")]
  assert texts(swahili)[0][0] == "hypothesis: H-sw premise: P-sw"


def test_xnli_zeroshot_trains_on_english_mnli_in_the_same_format(prepared):
  mnli = {"premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": 0, "idx": 0}
  with mock_examples({"train": [mnli]}):
    out = run_task("xnli_mnli_train", "train")
  assert texts(out) == [("hypothesis: An animal rests. premise: A cat sleeps.", "entailment")]
  mixture = data_lib.get_mixture_or_task("xnli_zeroshot")
  assert len(mixture.tasks) == 16
  assert [t.name for t in mixture.tasks if "train" in t.splits] == ["xnli_mnli_train"]
  mt5 = data_lib.get_vocabulary("mt5")
  assert all(t.output_features["inputs"].vocabulary is mt5 for t in mixture.tasks)


CATEGORIES = sorted(xlingual.SIB200_VERBALIZERS)


def _write_sib(root, lang, per_class):
  (root / lang).mkdir(parents=True)
  for name, n in (("train", per_class), ("dev", 1), ("test", 2)):
    with open(root / lang / f"{name}.tsv", "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f, delimiter="\t")
      writer.writerow(["index_id", "category", "text"])
      i = 0
      for category in CATEGORIES:
        for j in range(n):
          writer.writerow([i, category, f'{lang} {name} "{category}" {j}'])
          i += 1


@pytest.fixture(scope="module")
def sib_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("sib200")
  _write_sib(root, "eng_Latn", per_class=4)
  _write_sib(root, "fra_Latn", per_class=4)
  names = xlingual.register_sib200(root, shots=(2,), seeds=(0, 1))
  assert "sib200_eng_Latn_k2_seed1" in names and "sib200_eval" in names
  return root


def test_sib200_k_shot_is_class_balanced_and_seeded(sib_dir):
  seed0 = run_task("sib200_eng_Latn_k2_seed0", "train")
  again = run_task("sib200_eng_Latn_k2_seed0", "train")
  seed1 = run_task("sib200_eng_Latn_k2_seed1", "train")
  targets = [t for _, t in texts(seed0)]
  assert sorted(targets) == sorted(xlingual.SIB200_LABELS * 2)
  assert texts(seed0) == texts(again)
  assert sorted(texts(seed0)) != sorted(texts(seed1))


def test_sib200_evaluation_task_reads_a_language(sib_dir):
  out = run_task("sib200_fra_Latn", "test")
  assert len(out) == 2 * len(CATEGORIES)
  assert texts(out)[0] == ('fra_Latn test "entertainment" 0', "entertainment")
  assert ('fra_Latn test "geography" 1', "earth") in texts(out)
  assert ('fra_Latn test "science/technology" 0', "science") in texts(out)
  assert data_lib.task_labels("sib200_fra_Latn") == xlingual.SIB200_LABELS
  assert {t.name for t in data_lib.get_mixture_or_task("sib200_eval").tasks} == {
      "sib200_eng_Latn", "sib200_fra_Latn"}


def test_sample_k_shot_undersamples_to_the_rarest_class():
  rows = [{"category": "a", "id": i} for i in range(5)] + [{"category": "b", "id": 9}]
  out = xlingual.sample_k_shot(rows, None, seed=0)
  assert sorted(r["category"] for r in out) == ["a", "b"]
  with pytest.raises(ValueError, match="has 1"):
    xlingual.sample_k_shot(rows, 2, seed=0)


def test_language_table_rows_and_text():
  labels = ("a", "b")
  rows, table = xlingual.language_table(
      {"de": (["a", "a", "b", "b"], ["a", "b", "b", "b"]),
       "sw": (["a", "b"], ["a", "b"])}, labels)
  de, sw, avg = rows
  assert (de.language, de.examples, de.accuracy) == ("de", 4, 75.0)
  # de: F1(a) = 2*1/(2*1+0+1) = 2/3; F1(b) = 2*2/(2*2+1+0) = 4/5.
  assert de.macro_f1 == pytest.approx(100 * (2 / 3 + 4 / 5) / 2)
  assert (sw.accuracy, sw.macro_f1) == (100.0, 100.0)
  assert avg.language == "average" and avg.accuracy == pytest.approx(87.5)
  assert table.splitlines()[1].split() == ["de", "4", "75.00", "73.33"]


MRQA_EXAMPLE = {"question": "Who did\nit?", "context": "[TLE] Title [PAR] Ann\u00a0 did it.",
                "answers": ["Ann", "ann."],
                "detected_answers": {"text": ["Ann\u2009"]}}  # Spans: not read.


def test_mrqa_is_formatted_as_the_reference_repository(prepared):
  # Whitespace (Unicode too) normalised, punctuation spaced (markers become '[ PAR ]'),
  # target the first detected answer, `answers` the gold answers spaced the same way.
  with mock_examples({"test": [MRQA_EXAMPLE]}):
    out = run_task("mrqa_drop", "validation")
    bare = run_task("mrqa_drop_noprefix", "validation")
  assert texts(out) == [("question: Who did it ? context: [ TLE ] Title [ PAR ] Ann did it . ",
                         "Ann ")]
  assert texts(bare) == [("Who did it ? context: [ TLE ] Title [ PAR ] Ann did it . ", "Ann ")]
  assert [a.decode() for a in out[0]["answers"]] == ["Ann", "ann . "]
  assert len(data_lib.get_mixture_or_task("mrqa_ood").tasks) == 6
  assert len(data_lib.get_mixture_or_task("mrqa_transfer_noprefix").tasks) == 7


def test_mrqa_marker_stripping_is_an_option(prepared):
  from prompt_jax.data import registry, transfer
  registry.add_task(transfer.mrqa_spec("drop", strip_markers=True, name="mrqa_drop_stripped"))
  with mock_examples({"test": [MRQA_EXAMPLE]}):
    out = run_task("mrqa_drop_stripped", "validation")
  assert texts(out)[0][0] == "question: Who did it ? context: Title Ann did it . "


def test_squad_is_punctuation_spaced_as_t5(prepared):
  example = {"question": "Where's (it)?", "context": "In  Paris, France.\n", "id": "x",
             "title": "T", "answers": {"text": ["Paris", "Paris, France."],
                                       "answer_start": [4, 4]}}
  with mock_examples({"train": [example]}):
    out = run_task("squad", "train")
    bare = run_task("squad_noprefix", "train")
  assert texts(out) == [("question: Where ' s ( it ) ? context: In Paris , France . ", "Paris")]
  assert texts(bare) == [("Where ' s ( it ) ? context: In Paris , France . ", "Paris")]
  assert [a.decode() for a in out[0]["answers"]] == ["Paris", "Paris , France . "]


def test_squad_spaces_only_ascii_punctuation(prepared):
  example = {"question": "Who—\"really\"—won in 1999/2000?",
             "context": "O’Neil won ($5; 50%)…", "id": "b", "title": "T",
             "answers": {"text": ["O’Neil"], "answer_start": [0]}}
  with mock_examples({"validation": [example]}):
    out = run_task("squad", "validation")
  assert texts(out) == [("question: Who— \" really \" —won in 1999 / 2000 ? context: O’Neil "
                         "won ( $ 5 ; 50 % ) …", "O’Neil")]


def test_paraphrase_transfer_maps_fields_and_labels(prepared):
  mrpc = {"sentence1": "He left.", "sentence2": "He went.", "label": 1, "idx": 0}
  qqp = {"question1": "Why?", "question2": "How?", "label": 0, "idx": 0}
  with mock_examples({"validation": [mrpc]}):
    mrpc_as_qqp = run_task("transfer_mrpc_as_qqp", "validation")
  with mock_examples({"validation": [qqp]}):
    qqp_as_mrpc = run_task("transfer_qqp_as_mrpc", "validation")
  assert texts(mrpc_as_qqp) == [("question1: He left. question2: He went.", "duplicate")]
  assert texts(qqp_as_mrpc) == [("sentence1: Why? sentence2: How?", "not_equivalent")]
  assert data_lib.task_labels("transfer_mrpc_as_qqp") == ("not_duplicate", "duplicate")
  mixture = data_lib.get_mixture_or_task("transfer_qqp_to_mrpc")
  assert [t.name for t in mixture.tasks] == ["glue_qqp_noprefix", "transfer_mrpc_as_qqp"]
