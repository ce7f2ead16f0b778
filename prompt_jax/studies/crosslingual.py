"""Cross-lingual transfer tables (Philippy et al. 2024): train on English, evaluate everywhere.

One command trains every setting (prompt tuning at several lengths, the reparameterised
prompt, model tuning, ...) for every seed on the training task, evaluates each trained run
zero-shot on every language's split, and writes a per-language table:

    prompt-jax xlingual --gin_file=xlingual/sib200_mt5.gin \
      --gin.STUDY_DIR="'/tmp/sib200'" --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/mt5_base'" \
      --gin.SIB200_DIR="'/data/sib200'"

    STUDY_DIR/
      <setting>/seed<s>/             the run's model dir (resumable; what `prompt-jax train` leaves)
      <setting>/seed<s>/xlingual.json   its per-language metrics (a finished run is not redone)
      results.jsonl                  one line per (setting, seed, language)
      table.csv, table.md, table.png mean +- std over seeds per language, plus the average

A prompt setting is evaluated the way a user would ship it: the exported prompt `.npy` in a
plain `Prompt` on the pretrained checkpoint (so the reparameterised prompt needs no MLP). A
model-tuning setting is evaluated with its trained weights. Classification tasks (XNLI,
SIB-200) use rank classification over their verbalizers; the skill gym uses generation.

A study is a `Study` bound in gin (`gin/xlingual/*.gin`); each setting is a list of gin
files and bindings of the ordinary run files, so any method that trains from the CLI is a
setting. With `Study.gym` set, the study first builds (or reuses) the skill gym's
multi-script backbone and uses it as the checkpoint (see `prompt_jax.studies.gym_scripts`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import gin
import numpy as np

if TYPE_CHECKING:  # Annotations only; the data package registers every task when imported.
  from prompt_jax.data import xlingual

Results = dict[tuple[str, int, str], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Study:
  """One cross-lingual table: settings x seeds, trained on one task, evaluated per language.

  Attributes:
    study_dir: where runs, results and tables go.
    checkpoint: the pretrained checkpoint (ignored with `gym`: the gym backbone is used).
    train_task: the training task; `{seed}` is replaced by the seed (k-shot tasks).
    eval_tasks: language -> evaluation task, or a mixture name (languages: its task names
      minus their common prefix).
    settings: name -> gin files (ending in .gin) and bindings ("NAME = value") of the run.
    seeds: training seeds (prompt init, data order, k-shot draw).
    common: gin files and bindings every setting shares (model files, ...).
    macros: run macros every setting shares, as values (TRAIN_STEPS, BATCH_SIZE, ...);
      they become `NAME = value` bindings after `common`, before the setting's own.
    split: evaluation split.
    mode: "rank_classification" (XNLI, SIB-200) or "generation" (the gym).
    metrics: metric names tabulated, in order (the first is plotted).
    feature_lengths: evaluation feature lengths.
    batch_size: evaluation batch size.
    max_eval_examples: per language (None: the whole split).
    sib200_dir: if set, SIB-200 is registered from it (k-shot tasks for `sib200_shots` and
      `seeds`, English training).
    sib200_shots: examples per class of the SIB-200 training tasks (None: all, balanced).
    gym: if set, a `gym_scripts.GymStudy`: build the multi-script backbone first.
  """
  study_dir: str
  train_task: str
  eval_tasks: Any
  settings: Mapping[str, Sequence[str]]
  checkpoint: str = ""
  seeds: Sequence[int] = (0, 1, 2, 3)
  common: Sequence[str] = ()
  macros: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  split: str = "test"
  mode: str = "rank_classification"
  metrics: Sequence[str] = ("accuracy", "mean_7class_f1")
  feature_lengths: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {"inputs": 512, "targets": 8})
  batch_size: int = 32
  max_eval_examples: int | None = None
  sib200_dir: str | None = None
  sib200_shots: Sequence[int | None] = (8,)
  gym: Any = None


def split_entries(entries: Sequence[str]) -> tuple[list[str], list[str]]:
  """(gin files, bindings) of a setting: entries ending in `.gin` are files."""
  files = [e for e in entries if e.strip().endswith(".gin")]
  return files, [e for e in entries if not e.strip().endswith(".gin")]


def language_names(tasks: Sequence[str]) -> dict[str, str]:
  """Language label -> task: the names minus their common '_'-bounded prefix."""
  if len(tasks) == 1:
    return {tasks[0]: tasks[0]}
  prefix = tasks[0]
  for t in tasks[1:]:
    while not t.startswith(prefix):
      prefix = prefix[:-1]
  prefix = prefix[:prefix.rfind("_") + 1]
  return {t[len(prefix):]: t for t in tasks}


def resolve_eval_tasks(eval_tasks: Any) -> dict[str, str]:
  if isinstance(eval_tasks, Mapping):
    return dict(eval_tasks)
  if isinstance(eval_tasks, str):
    from prompt_jax.train import inputs
    return language_names(inputs.task_names(eval_tasks))
  return language_names(list(eval_tasks))


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


# ---------------------------------------------------------------------------------------
# One run: train (the ordinary gin run), then evaluate every language.


def _query(name: str, default: Any) -> Any:
  try:
    return gin.query_parameter(name)
  except (ValueError, KeyError):
    return default


def train_run(study: Study, checkpoint: str, setting: Sequence[str], seed: int,
              run_dir: pathlib.Path, search_paths: str = "") -> tuple[Any, dict]:
  """Parses the run's gin (common + setting + this run's macros) and trains it.

  Returns:
    (the TrainResult, {"placement", "prompt_file" or None}): how to evaluate it.
  """
  from prompt_jax import cli, runs
  macros = [f"{k} = {v!r}" for k, v in study.macros.items()]
  files, bindings = split_entries([*study.common, *macros, *setting])
  bindings += [f"MODEL_DIR = '{run_dir}'",
               f"MIXTURE_OR_TASK_NAME = '{study.train_task.format(seed=seed)}'",
               f"INITIAL_CHECKPOINT_PATH = '{checkpoint}'", f"train.seed = {seed}",
               "trainer.TrainerConfig.progress_bar = False"]
  cli.parse_gin(files, bindings, search_paths)
  has_prompt = _query("train.prompt", None) is not None
  placement = _query("%PROMPT_PLACEMENT", "prefix") if has_prompt else None
  result = runs.train()
  info = {"placement": placement, "prompt_file": None}
  if has_prompt:
    info["prompt_file"] = str(run_dir / "prompts" / f"prompt_{result.step}.npy")
  return result, info


def evaluate_run(study: Study, checkpoint: str, languages: Mapping[str, str], result: Any,
                 info: Mapping[str, Any], run_dir: pathlib.Path) -> dict[str, dict[str, float]]:
  """Every language's metrics for one trained run (gin still holds the run's config)."""
  from prompt_jax import runs
  from prompt_jax.models.t5 import T5Transformer
  from prompt_jax.train import adapter as adapter_lib
  from prompt_jax.train import evaluation
  train_task = study.train_task.format(seed=0)
  if info["prompt_file"]:
    model, frozen, trainable, _ = runs._prompted_from_file(  # The shipped-prompt path.
        checkpoint, info["prompt_file"], info["placement"], train_task)
  else:
    base, _ = runs._load(checkpoint, runs.architecture())
    model, frozen = adapter_lib.ModelAdapter(T5Transformer(base.config)), {}
    trainable = result.trainable
  tasks = list(languages.values())
  ev = evaluation.Evaluator(model, frozen, tasks, split=study.split,
                            feature_lengths=study.feature_lengths,
                            batch_size=study.batch_size, max_examples=study.max_eval_examples,
                            mode=study.mode, task_ids={t: 0 for t in tasks})
  out = {}
  for lang, task in languages.items():
    r = ev.evaluate_task(trainable, task)
    evaluation.write_inference(str(run_dir), task, "xlingual", ev.examples[task], r.predictions)
    out[lang] = {k: float(v) for k, v in r.metrics.items()}
  return out


# ---------------------------------------------------------------------------------------
# The study.


def run_study(study: Study, *, search_paths: str = "",
              log: Callable[[str], None] = print) -> Results:
  """Trains and evaluates every (setting, seed); writes results and tables. See module doc."""
  root = pathlib.Path(study.study_dir)
  root.mkdir(parents=True, exist_ok=True)
  checkpoint = study.checkpoint
  if study.gym is not None:
    from prompt_jax.studies import gym_scripts
    checkpoint = str(gym_scripts.prepare(study.gym, log=log))
  from prompt_jax.data import xlingual  # Local: importing the data package registers tasks.
  if study.sib200_dir:
    xlingual.register_sib200(study.sib200_dir, shots=study.sib200_shots, seeds=study.seeds)
  from prompt_jax.data import registry  # noqa: F401  Registers XNLI and the benchmarks.
  languages = resolve_eval_tasks(study.eval_tasks)
  results: Results = {}
  for name, setting in study.settings.items():
    for seed in study.seeds:
      run_dir = root / _slug(name) / f"seed{seed}"
      done = run_dir / "xlingual.json"
      t0 = time.perf_counter()
      if done.exists():
        per_lang = json.loads(done.read_text())["languages"]
      else:
        result, info = train_run(study, checkpoint, setting, seed, run_dir, search_paths)
        per_lang = evaluate_run(study, checkpoint, languages, result, info, run_dir)
        done.write_text(json.dumps({"setting": name, "seed": seed, **info,
                                    "languages": per_lang}, indent=1) + "\n")
      for lang, metrics in per_lang.items():
        results[(name, seed, lang)] = metrics
      first = study.metrics[0]
      log(f"{name} seed {seed}: " + ", ".join(f"{lang} {m[first]:.1f}"
                                              for lang, m in per_lang.items())
          + f" ({first}; {time.perf_counter() - t0:.0f} s)")
  write_outputs(root, results, study.metrics)
  return results


def write_outputs(root: pathlib.Path, results: Results, metrics: Sequence[str]) -> None:
  """results.jsonl, table.csv, table.md and table.png in `root`."""
  with open(root / "results.jsonl", "w") as f:
    for (setting, seed, lang), m in results.items():
      f.write(json.dumps({"setting": setting, "seed": seed, "language": lang, **m}) + "\n")
  from prompt_jax.data import xlingual
  cells = xlingual.seed_table(results, metrics)
  lines = ["setting,language,metric,mean,std,seeds"]
  lines += [f"{c.setting},{c.language},{c.metric},{c.mean:.4f},{c.std:.4f},{c.seeds}"
            for c in cells]
  (root / "table.csv").write_text("\n".join(lines) + "\n")
  (root / "table.md").write_text(markdown_table(cells, metrics))
  plot_table(cells, metrics[0], root / "table.png")


def markdown_table(cells: Sequence[xlingual.SeedCell], metrics: Sequence[str]) -> str:
  """One Markdown table per metric: languages as rows, settings as columns, mean +- std."""
  out = []
  for metric in metrics:
    mine = [c for c in cells if c.metric == metric]
    settings = list(dict.fromkeys(c.setting for c in mine))
    langs = list(dict.fromkeys(c.language for c in mine))
    by = {(c.setting, c.language): c for c in mine}
    out += [f"**{metric}** (mean ± std over seeds)", "",
            "| language | " + " | ".join(settings) + " |",
            "| --- |" + " --- |" * len(settings)]
    for lang in langs:
      row = [f"{by[(s, lang)].mean:.1f} ± {by[(s, lang)].std:.1f}" if (s, lang) in by else ""
             for s in settings]
      out.append(f"| {lang} | " + " | ".join(row) + " |")
    out.append("")
  return "\n".join(out)


def plot_table(cells: Sequence[xlingual.SeedCell], metric: str, path: pathlib.Path) -> None:
  """Languages on the x axis, one series per setting (mean, error bars: std over seeds)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  mine = [c for c in cells if c.metric == metric]
  settings = list(dict.fromkeys(c.setting for c in mine))
  langs = list(dict.fromkeys(c.language for c in mine))
  fig = Figure(figsize=(max(6.0, 0.7 * len(langs) + 3), 4.0))
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  x = np.arange(len(langs))
  for i, setting in enumerate(settings):
    by = {c.language: c for c in mine if c.setting == setting}
    ys = [by[lang].mean if lang in by else np.nan for lang in langs]
    es = [by[lang].std if lang in by else 0.0 for lang in langs]
    ax.errorbar(x + (i - (len(settings) - 1) / 2) * 0.08, ys, yerr=es, marker="o",
                capsize=2, label=setting)
  ax.set_xticks(x, langs, rotation=45 if len(langs) > 8 else 0)
  ax.set(ylabel=metric, xlabel="language", title=f"zero-shot transfer: {metric}")
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------
# Command line.


def parse_study(files: Sequence[str], bindings: Sequence[str], search_paths: str = "") -> Study:
  """The Study a study gin file (plus --gin. bindings) describes."""
  from prompt_jax import cli, configurables
  cli.parse_gin(files, bindings, search_paths)
  return configurables.Study()


def main(argv: Sequence[str] | None = None) -> int:
  """`prompt-jax xlingual --gin_file=xlingual/<study>.gin [--gin.NAME=VALUE ...]`."""
  from prompt_jax import cli
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="prompt-jax xlingual", description=__doc__.split("\n\n")[0])
  p.add_argument("--gin_file", action="append", default=[], required=True)
  p.add_argument("--gin_search_paths", default="")
  p.add_argument("-v", "--verbose", action="store_true")
  try:
    bindings, rest = cli._split_gin_flags(argv)
    args = p.parse_args(rest)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)
    study = parse_study(args.gin_file, bindings, args.gin_search_paths)
    run_study(study, search_paths=args.gin_search_paths)
  except Exception as e:  # Only the user-fixable errors are shortened, as in the CLI.
    if isinstance(e, cli._known_errors()) or cli._is_gin_required(e):
      print(f"prompt-jax xlingual: error: {e}", file=sys.stderr)
      return 2
    raise
  print(f"tables: {pathlib.Path(study.study_dir) / 'table.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
