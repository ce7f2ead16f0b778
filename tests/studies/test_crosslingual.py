"""The cross-lingual table driver: one command, every language, mean +- std and the average."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prompt_jax.data import xlingual
from prompt_jax.studies import crosslingual
from tests.conftest import T5_SPM, T5X_TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LANGS = ("eng_Latn", "zho_Hans")


def test_seed_table_means_stds_and_the_average_of_per_seed_averages():
  results = {("a", 0, "x"): {"acc": 10.0}, ("a", 1, "x"): {"acc": 30.0},
             ("a", 0, "y"): {"acc": 50.0}, ("a", 1, "y"): {"acc": 90.0}}
  cells = {(c.language, c.metric): c for c in xlingual.seed_table(results, ["acc"])}
  assert list(cells) == [("x", "acc"), ("y", "acc"), ("average", "acc")]
  assert (cells[("x", "acc")].mean, cells[("x", "acc")].std) == (20.0, 10.0)
  # Per seed: (10 + 50) / 2 = 30 and (30 + 90) / 2 = 60.
  assert (cells[("average", "acc")].mean, cells[("average", "acc")].std) == (45.0, 15.0)
  md = crosslingual.markdown_table(xlingual.seed_table(results, ["acc"]), ["acc"])
  assert "| average | 45.0 ± 15.0 |" in md


def test_language_names_strip_the_common_prefix():
  assert crosslingual.language_names(["sib200_eng_Latn", "sib200_fra_Latn"]) == {
      "eng_Latn": "sib200_eng_Latn", "fra_Latn": "sib200_fra_Latn"}
  assert crosslingual.language_names(["xnli_ar", "xnli_bg"]) == {"ar": "xnli_ar",
                                                                  "bg": "xnli_bg"}
  assert crosslingual.split_entries(["a.gin", "X = 1"]) == (["a.gin"], ["X = 1"])


def _write_sib(root, lang):
  (root / lang).mkdir(parents=True)
  for name, n in (("train", 3), ("dev", 1), ("test", 2)):
    with open(root / lang / f"{name}.tsv", "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f, delimiter="\t")
      writer.writerow(["index_id", "category", "text"])
      for i, category in enumerate(sorted(xlingual.SIB200_VERBALIZERS) * n):
        writer.writerow([i, category, f"{lang} {name} {category.split('/')[0]} {i}"])


@pytest.mark.slow
def test_one_command_trains_on_english_and_tables_every_language(tmp_path):
  sib = tmp_path / "sib200"
  for lang in LANGS:
    _write_sib(sib, lang)
  study = tmp_path / "study"
  settings = {"prompt P=2": ["runs/prompt_finetune.gin", "methods/prompt_tuning.gin",
                             "prompts/random_uniform.gin", "PROMPT_LENGTH = 2"],
              "model tuning": ["runs/model_finetune.gin"]}
  args = ["--gin_file=xlingual/sib200_mt5.gin", f"--gin.STUDY_DIR='{study}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY}'", f"--gin.SIB200_DIR='{sib}'",
          "--gin.SIB200_TRAIN='sib200_eng_Latn_k2_seed{seed}'", "--gin.SEEDS=[0, 1]",
          "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.LENGTHS={'inputs': 16, 'targets': 4}",
          "--gin.xlingual.Study.sib200_shots=[2]",
          "--gin.xlingual.Study.common=['models/t5_1_1.gin', 'models/sizes/tiny.gin', "
          "\"train.eval_mode = 'rank_classification'\"]",
          f"--gin.xlingual.Study.settings={settings!r}"]
  env = {**os.environ, "PYTHONPATH": REPO, "PROMPT_JAX_MT5_VOCAB": str(T5_SPM),
         "PROMPT_JAX_T5_VOCAB": str(T5_SPM)}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-m", "prompt_jax", "xlingual", *args], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (study / "results.jsonl").read_text().splitlines()]
  assert len(rows) == 2 * 2 * len(LANGS)
  assert {r["language"] for r in rows} == set(LANGS)
  assert all(0 <= r["accuracy"] <= 100 and "mean_7class_f1" in r for r in rows)
  with open(study / "table.csv") as f:
    table = list(csv.DictReader(f))
  for setting in settings:
    for metric in ("accuracy", "mean_7class_f1"):
      mine = {r["language"]: r for r in table if r["setting"] == setting
              and r["metric"] == metric}
      assert set(mine) == {*LANGS, "average"}
      assert all(r["seeds"] == "2" for r in mine.values())
      per_seed = [np.mean([r[metric] for r in rows if r["setting"] == setting
                           and r["seed"] == s]) for s in (0, 1)]
      assert float(mine["average"]["mean"]) == pytest.approx(np.mean(per_seed), abs=1e-4)
  md = (study / "table.md").read_text()
  assert all(f"| {lang} |" in md for lang in (*LANGS, "average"))
  assert (study / "table.png").stat().st_size > 1000
  # A prompt setting was evaluated from its exported file (a plain Prompt).
  info = json.loads((study / "prompt_P=2" / "seed1" / "xlingual.json").read_text())
  assert info["prompt_file"].endswith("prompt_2.npy") and info["placement"] == "prefix"
  assert sorted(info["languages"]) == sorted(LANGS)


def test_shipped_study_files_parse_into_the_papers_settings():
  req = ["STUDY_DIR = '/tmp/x'", "INITIAL_CHECKPOINT_PATH = '/ckpt'"]
  sib = crosslingual.parse_study(["xlingual/sib200_mt5.gin"], [*req, "SIB200_DIR = '/d'"])
  assert list(sib.seeds) == [0, 1, 2, 3] and list(sib.sib200_shots) == [8, 32, 512, None]
  assert [s for s in sib.settings if s.startswith("prompt P=")] == [
      f"prompt P={n}" for n in (1, 5, 10, 20, 50)]
  assert {"reparam P=10", "model tuning"} <= set(sib.settings)
  assert sib.mode == "rank_classification" and "models/mt5.gin" in sib.common
  xnli = crosslingual.parse_study(["xlingual/xnli_mt5.gin"], req)
  assert xnli.train_task == "xnli_mnli_train" and xnli.eval_tasks == "xnli_eval"
  gym = crosslingual.parse_study(["xlingual/gym_scripts.gin"], [])
  assert gym.gym is not None and set(gym.eval_tasks) == {"latin", "near", "half", "upper",
                                                         "symbols"}
  for path in (crosslingual_gin_dir()).glob("*.gin"):
    text = path.read_text()
    assert "Required" in text and "Commonly overridden" in text and "prompt-jax " in text


def crosslingual_gin_dir():
  from prompt_jax import cli
  return cli.GIN_DIR / "xlingual"
