"""Cross-lingual transfer: XNLI zero-shot, SIB-200 from local TSVs, per-language tables.

XNLI (TFDS `xnli` 1.1.0, mT5 vocabulary by default): train on English MNLI
(`xnli_mnli_train`, MNLI in the no-prefix format), evaluate `xnli_<lang>` (validation /
test) in the 15 XNLI languages; mixtures `xnli_eval` (the 15) and `xnli_zeroshot` (training
task + the 15 evaluation tasks, which have no train split and so only take part in eval).

SIB-200 is not in TFDS: `register_sib200(data_dir)` reads the distributed layout
`<data_dir>/<lang_code>/{train,dev,test}.tsv` (columns index_id, category, text) and
registers `sib200_<lang>` (validation = dev, test = test) for every language directory,
`sib200_<lang>_k<k>_seed<s>` training tasks (k examples per class after class-balanced
undersampling of the training split) and the mixture `sib200_eval`. Inputs are the text
itself; targets are English verbalizers. Setting PROMPT_JAX_SIB200_DIR registers the
directory when `prompt_jax.data` is imported.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_jax.data import metrics as m
from prompt_jax.data import postprocessors as post
from prompt_jax.data import preprocessors as pre
from prompt_jax.data.glue import GLUE_TASKS, MNLI_LABELS, kv_spec
from prompt_jax.data.registry import MixtureSpec, TaskSpec, add_mixture, add_task
from prompt_jax.data.sources import tfds_source_factory

XNLI_TFDS = "xnli:1.1.0"
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur",
                  "vi", "zh")
SIB200_VERBALIZERS = {
    "science/technology": "science", "travel": "travel", "politics": "politics",
    "sports": "sports", "health": "health", "entertainment": "entertainment",
    "geography": "earth",
}
SIB200_LABELS = ("earth", "science", "entertainment", "politics", "health", "travel", "sports")
SIB200_SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
SIB200_ENV = "PROMPT_JAX_SIB200_DIR"
_HYP_PREM = (("hypothesis", "hypothesis"), ("premise", "premise"))


def xnli_spec(language: str, vocabulary: str = "mt5") -> TaskSpec:
  """XNLI in one language: 'hypothesis: ... premise: ...' -> MNLI label names."""
  return TaskSpec(
      name=f"xnli_{language}",
      make_source=tfds_source_factory(XNLI_TFDS, {"validation": "validation", "test": "test"}),
      preprocessors=(pre.select_xnli_language(language),
                     pre.classification(None, _HYP_PREM, MNLI_LABELS, keep=("label",))),
      postprocess_fn=post.string_label,
      metric_fns=(m.accuracy, m.mean_class_f1_for(MNLI_LABELS)), labels=MNLI_LABELS,
      tfds_datasets=(XNLI_TFDS,), vocabulary=vocabulary,
      description=f"XNLI {language} (zero-shot evaluation)")


def register_xnli(vocabulary: str = "mt5") -> None:
  """Registers `xnli_mnli_train`, `xnli_<lang>` and the `xnli_eval` / `xnli_zeroshot` mixtures."""
  train = kv_spec(GLUE_TASKS["mnli"], "xnli_mnli_train", use_prefix=False,
                  vocabulary=vocabulary)
  add_task(dataclasses.replace(train, description="English MNLI for XNLI zero-shot transfer"))
  evals = [add_task(xnli_spec(lang, vocabulary)) for lang in XNLI_LANGUAGES]
  add_mixture(MixtureSpec("xnli_eval", tuple((t, 1.0) for t in evals), vocabulary,
                          description="XNLI, 15 languages (evaluation)"))
  add_mixture(MixtureSpec("xnli_zeroshot", (("xnli_mnli_train", 1.0),)
                          + tuple((t, 1.0) for t in evals), vocabulary,
                          description="train English MNLI, evaluate XNLI in 15 languages"))


# ----------------------------------------------------------------------------- SIB-200


def read_sib200_split(data_dir: str | os.PathLike, language: str, split: str
                      ) -> list[dict[str, str]]:
  """Rows {index_id, category, text, verbalizer} of one SIB-200 language split.

  Args:
    data_dir: directory holding one sub-directory per language code.
    language: e.g. 'eng_Latn'.
    split: 'train', 'validation' (dev.tsv) or 'test'.
  """
  path = pathlib.Path(data_dir) / language / SIB200_SPLIT_FILES[split]
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  missing = {"index_id", "category", "text"} - set(rows[0] if rows else {})
  if missing:
    raise ValueError(f"{path}: missing column(s) {sorted(missing)}.")
  for row in rows:
    if row["category"] not in SIB200_VERBALIZERS:
      raise ValueError(f"{path}: unknown category {row['category']!r}.")
    row["verbalizer"] = SIB200_VERBALIZERS[row["category"]]
  return rows


def sample_k_shot(rows: Sequence[Mapping[str, str]], k: int | None, seed: int
                  ) -> list[Mapping[str, str]]:
  """Class-balanced undersampling: `k` rows per category (None: as many as the rarest).

  The draw depends only on `seed` and the rows; the result is shuffled.
  """
  by_class: dict[str, list[Mapping[str, str]]] = {}
  for row in rows:
    by_class.setdefault(row["category"], []).append(row)
  per_class = min(len(v) for v in by_class.values()) if k is None else k
  rng = np.random.default_rng(seed)
  chosen = []
  for category in sorted(by_class):
    members = by_class[category]
    if per_class > len(members):
      raise ValueError(f"{k} shots requested but category {category!r} has {len(members)}.")
    chosen += [members[i] for i in rng.permutation(len(members))[:per_class]]
  return [chosen[i] for i in rng.permutation(len(chosen))]


def _rows_dataset(rows: Sequence[Mapping[str, str]]) -> tf.data.Dataset:
  keys = ("index_id", "category", "text", "verbalizer")
  return tf.data.Dataset.from_tensor_slices(
      {k: tf.constant([r[k] for r in rows], tf.string) for k in keys})


def _sib200_source(data_dir: str, language: str, splits: Sequence[str],
                   k: int | None = None, seed: int | None = None) -> seqio.DataSource:
  """Reads the TSVs when data is requested; the train split is k-shot if `seed` is set."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    # One file per split; SeqIO shuffles examples. seqio passes `seed` when a run is seeded
    # (it must be accepted); the k-shot draw uses the task's own `k_seed` instead.
    del shuffle_files, seed
    rows = read_sib200_split(data_dir, language, split)
    if split == "train" and k_seed is not None:
      rows = sample_k_shot(rows, k, k_seed)
    return _rows_dataset(rows)

  k_seed = seed
  return seqio.FunctionDataSource(dataset_fn, splits=splits)


def sib200_languages(data_dir: str | os.PathLike) -> list[str]:
  """Language codes: sub-directories of `data_dir` with a test.tsv."""
  root = pathlib.Path(data_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"SIB-200 directory {root} does not exist.")
  return sorted(p.name for p in root.iterdir() if (p / "test.tsv").is_file())


def _sib200_spec(name: str, source: seqio.DataSource, vocabulary: str, description: str
                 ) -> TaskSpec:
  return TaskSpec(
      name=name, make_source=lambda _name: source,
      preprocessors=(pre.raw_text_classification("text", "verbalizer"),),
      postprocess_fn=post.string_label,
      metric_fns=(m.accuracy, m.mean_class_f1_for(SIB200_LABELS)), labels=SIB200_LABELS,
      vocabulary=vocabulary, description=description)


def register_sib200(data_dir: str | os.PathLike, languages: Iterable[str] | None = None, *,
                    shots: Iterable[int | None] = (8,), seeds: Iterable[int] = (0, 1, 2),
                    train_languages: Iterable[str] = ("eng_Latn",),
                    vocabulary: str = "mt5") -> list[str]:
  """Registers SIB-200 tasks read from `data_dir`; returns the registered names.

  Args:
    data_dir: the distributed layout, `<data_dir>/<lang>/{train,dev,test}.tsv`.
    languages: evaluation languages (default: every language directory).
    shots: examples per class of the training tasks (None: balanced, all of the rarest).
    seeds: sampling seeds; one training task per (language, shots, seed).
    train_languages: languages that get k-shot training tasks.
    vocabulary: vocabulary name (default mT5).
  """
  data_dir = os.fspath(data_dir)
  languages = list(languages) if languages is not None else sib200_languages(data_dir)
  names = []
  for lang in languages:
    source = _sib200_source(data_dir, lang, ("validation", "test"))
    names.append(add_task(_sib200_spec(f"sib200_{lang}", source, vocabulary,
                                       f"SIB-200 {lang} (dev / test)")))
  for lang in train_languages:
    for k in shots:
      for seed in seeds:
        shot = "balanced" if k is None else f"k{k}"
        source = _sib200_source(data_dir, lang, ("train", "validation", "test"), k, seed)
        names.append(add_task(_sib200_spec(
            f"sib200_{lang}_{shot}_seed{seed}", source, vocabulary,
            f"SIB-200 {lang} training, {shot} per class, seed {seed}")))
  eval_names = [f"sib200_{lang}" for lang in languages]
  names.append(add_mixture(MixtureSpec("sib200_eval", tuple((t, 1.0) for t in eval_names),
                                       vocabulary, description="SIB-200, every language")))
  return names


def maybe_register_sib200_from_env() -> list[str]:
  """Registers SIB-200 from $PROMPT_JAX_SIB200_DIR when it is set."""
  data_dir = os.environ.get(SIB200_ENV)
  return register_sib200(data_dir) if data_dir else []


# ----------------------------------------------------------------- per-language results


@dataclasses.dataclass(frozen=True)
class LanguageRow:
  language: str
  examples: int
  accuracy: float
  macro_f1: float


def language_table(results: Mapping[str, tuple[Sequence[str], Sequence[str]]],
                   labels: Sequence[str]) -> tuple[list[LanguageRow], str]:
  """Per-language accuracy and macro-F1 (percent), plus their unweighted average.

  Args:
    results: language -> (targets, predictions), label strings.
    labels: the label set macro-F1 averages over.

  Returns:
    Rows (languages in the given order, then 'average') and the rows as a text table.
  """
  macro_f1 = m.mean_class_f1_for(labels)
  key = f"mean_{len(labels)}class_f1"
  rows = []
  for lang, (targets, predictions) in results.items():
    rows.append(LanguageRow(lang, len(targets), m.accuracy(targets, predictions)["accuracy"],
                            macro_f1(targets, predictions)[key]))
  if rows:
    rows.append(LanguageRow("average", sum(r.examples for r in rows),
                            float(np.mean([r.accuracy for r in rows])),
                            float(np.mean([r.macro_f1 for r in rows]))))
  width = max([len(r.language) for r in rows] + [8])
  lines = [f"{'language':<{width}}  {'n':>6}  {'accuracy':>8}  {'macro_f1':>8}"]
  lines += [f"{r.language:<{width}}  {r.examples:>6}  {r.accuracy:>8.2f}  {r.macro_f1:>8.2f}"
            for r in rows]
  return rows, "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class SeedCell:
  """One (setting, language) cell: a metric's mean and standard deviation over seeds."""
  setting: str
  language: str
  metric: str
  mean: float
  std: float
  seeds: int


def seed_table(results: Mapping[tuple[str, int, str], Mapping[str, float]],
               metrics: Sequence[str]) -> list[SeedCell]:
  """Mean +- std over seeds per (setting, language), plus an 'average' row per setting.

  Args:
    results: (setting, seed, language) -> {metric: value} (percent).
    metrics: the metric names to tabulate (e.g. accuracy, mean_7class_f1).

  Returns:
    Cells in the order settings and languages first appear; each setting ends with
    'average': per seed the unweighted mean over its languages, then mean +- std over seeds.
    std is the population standard deviation (0 for one seed).
  """
  settings = list(dict.fromkeys(s for s, _, _ in results))
  languages = list(dict.fromkeys(lang for _, _, lang in results))
  cells = []
  for setting in settings:
    seeds = sorted({seed for s, seed, _ in results if s == setting})
    for metric in metrics:
      per_seed_avg = {seed: [] for seed in seeds}
      for lang in languages:
        values = [results[(setting, seed, lang)][metric] for seed in seeds
                  if (setting, seed, lang) in results]
        if not values:
          continue
        for seed in seeds:
          if (setting, seed, lang) in results:
            per_seed_avg[seed].append(results[(setting, seed, lang)][metric])
        cells.append(SeedCell(setting, lang, metric, float(np.mean(values)),
                              float(np.std(values)), len(values)))
      averages = [float(np.mean(v)) for v in per_seed_avg.values() if v]
      cells.append(SeedCell(setting, "average", metric, float(np.mean(averages)),
                            float(np.std(averages)), len(averages)))
  return cells
