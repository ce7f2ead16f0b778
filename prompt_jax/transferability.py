"""`prompt-jax transferability`: how well each source prompt should transfer to each target.

  prompt-jax transferability --checkpoint=DIR --source_prompts=DIR_OR_FILES \
      --target_task=TASK[,TASK...] --target_prompts=FILE_OR_RUN_DIR[,...] --out=DIR \
      [--num_examples=100] [--pooling=tokens|prompt] [--split=validation]

Sources and target prompts are `.npy` prompts [P, D], training run dirs (their
`prompts/prompt_best.npy`, else the latest `prompt_<step>.npy`), or (sources only) a dir
holding such files or run dirs; comma-separated. Each target task needs a prompt trained on
it (P_T; a short target run will do). For every source x target pair the frozen model is run
with each prompt over the first `--num_examples` inputs of the target's split, and three
metrics are written (prompt_jax.prompts.similarity): `panda.csv` (PANDA-style s(S, T), the
cosine of mean-pooled encoder states), `e_avg.csv` (SPoT's mean-prompt cosine), `on.csv`
(neuron overlap, Su et al.), rows = sources, columns = targets, plus `transferability.png`
(one heatmap per metric). A `panda.csv` entry is what gin/methods/panda.gin reads as
PANDA_SIMILARITY_CSV. Bad input exits with status 2 before any model is loaded.
"""

from __future__ import annotations

import argparse
import csv
import logging
import pathlib
import sys
from typing import Sequence

import numpy as np

METRICS = ("panda", "e_avg", "on")
_TITLES = {"panda": "PANDA-style s(S,T)", "e_avg": "E_avg (SPoT)", "on": "ON (neuron overlap)"}


def _error(message: str):
  from prompt_jax.cli import CliError
  return CliError(message)


def _prompt_file(path: pathlib.Path) -> pathlib.Path:
  """A `.npy` file, or a run dir's best (else latest) exported prompt."""
  from prompt_jax.prompts import initializers
  if path.is_file():
    return path
  if (path / "prompts").is_dir():
    return initializers.run_prompt_path(path, "best")
  raise _error(f"{path} is neither a .npy prompt nor a training run dir (no prompts/).")


def _name(path: pathlib.Path, file: pathlib.Path) -> str:
  """A run dir's name, or a file's stem (its run dir's name for a run's export)."""
  if path.is_dir():
    return path.name
  if file.stem.startswith("prompt_") and file.parent.name == "prompts":
    return file.parent.parent.name
  return file.stem


def resolve_prompts(spec: str, *, expand_dirs: bool) -> dict[str, pathlib.Path]:
  """Comma-separated files / run dirs (/ dirs of them) -> {name: .npy path}, in order."""
  out: dict[str, pathlib.Path] = {}
  for part in (p.strip() for p in spec.split(",") if p.strip()):
    path = pathlib.Path(part)
    if not path.exists():
      raise _error(f"Prompt path {path} does not exist.")
    if expand_dirs and path.is_dir() and not (path / "prompts").is_dir():
      items = sorted(p for p in path.iterdir()
                     if p.suffix == ".npy" or (p / "prompts").is_dir())
      if not items:
        raise _error(f"{path} holds no .npy prompts and no run dirs.")
      entries = [(p, _prompt_file(p)) for p in items]
    else:
      entries = [(path, _prompt_file(path))]
    for p, file in entries:
      name = _name(p, file)
      if name in out:
        raise _error(f"Two prompts are both named {name!r} ({out[name]} and {file}); "
                     "rename one.")
      out[name] = file
  if not out:
    raise _error("No prompts given.")
  return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="prompt-jax transferability",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True, help="the frozen model (HF or T5X dir)")
  p.add_argument("--source_prompts", required=True)
  p.add_argument("--target_task", required=True, help="comma-separated task names")
  p.add_argument("--target_prompts", required=True,
                 help="one prompt (file or run dir) per target task, comma-separated")
  p.add_argument("--out", required=True, help="output dir for the CSVs and the heatmap")
  p.add_argument("--num_examples", type=int, default=100)
  p.add_argument("--split", default="validation")
  p.add_argument("--pooling", default="tokens", help="tokens (non-padding) or prompt")
  p.add_argument("--input_length", type=int, default=256, help="inputs truncated to this")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--tfds_data_dir", default=None)
  p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
  return p.parse_args(argv)


def check_args(args: argparse.Namespace):
  """Everything checkable without the model; returns (sources, targets {task: file})."""
  from prompt_jax import runs
  from prompt_jax.prompts import initializers
  from prompt_jax.prompts.similarity import POOLINGS
  for flag in ("num_examples", "input_length", "batch_size"):
    if getattr(args, flag) < 1:
      raise _error(f"--{flag} must be a positive integer, got {getattr(args, flag)}.")
  if args.pooling not in POOLINGS:
    raise _error(f"--pooling must be one of {POOLINGS}, got {args.pooling!r}.")
  runs.check_checkpoint_path(args.checkpoint)
  tasks = [t.strip() for t in args.target_task.split(",") if t.strip()]
  for task in tasks:
    runs.check_task(task, args.tfds_data_dir)
  sources = resolve_prompts(args.source_prompts, expand_dirs=True)
  target_files = list(resolve_prompts(args.target_prompts, expand_dirs=False).values())
  if len(target_files) != len(tasks):
    raise _error(f"--target_prompts gives {len(target_files)} prompt(s) for "
                 f"{len(tasks)} --target_task task(s); give one prompt per task, same order.")
  for file in [*sources.values(), *target_files]:
    initializers.load_npy_prompt(file)  # PromptFileError: a clear message, exit 2.
  out = pathlib.Path(args.out)
  existing = [out / f"{m}.csv" for m in METRICS if (out / f"{m}.csv").exists()]
  if existing and not args.overwrite:
    raise _error(f"{existing[0]} exists; pass --overwrite or choose another --out.")
  return sources, dict(zip(tasks, target_files))


def target_inputs(task: str, split: str, n: int, length: int) -> np.ndarray:
  """The first `n` encoder inputs [n, L] (0-padded) of a task split."""
  from prompt_jax.train import evaluation
  examples = evaluation.load_examples(task, split, feature_lengths={"inputs": length,
                                                                    "targets": length},
                                      max_examples=n)
  if not examples:
    raise _error(f"Task {task} has no examples in its {split!r} split.")
  width = max(len(e["inputs"]) for e in examples)
  tokens = np.zeros((len(examples), width), np.int32)
  for i, e in enumerate(examples):
    tokens[i, :len(e["inputs"])] = e["inputs"]
  return tokens


def write_csv(path: pathlib.Path, matrix: np.ndarray, sources: Sequence[str],
              targets: Sequence[str]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["source", *targets])
    for name, row in zip(sources, matrix):
      writer.writerow([name, *(f"{v:.6f}" for v in row)])


def plot_heatmaps(path: pathlib.Path, mats: dict[str, np.ndarray], sources: Sequence[str],
                  targets: Sequence[str]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(mats), figsize=(4 + 2.2 * len(mats) * max(1, len(targets)) / 2,
                                                  1.5 + 0.45 * len(sources)), squeeze=False)
  for ax, (metric, m) in zip(axes[0], mats.items()):
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(sources)), sources, fontsize=7)
    ax.set_title(_TITLES[metric], fontsize=9)
    for (i, j), v in np.ndenumerate(m):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, np.ndarray]:
  from prompt_jax import runs
  from prompt_jax.prompts import initializers, similarity
  sources, targets = check_args(args)
  model, frozen = runs._load(args.checkpoint, runs.architecture())
  d = model.config.d_model
  prompts = {n: initializers.load_npy_prompt(f) for n, f in sources.items()}
  target_prompts = {t: initializers.load_npy_prompt(f) for t, f in targets.items()}
  for name, p in [*prompts.items(), *target_prompts.items()]:
    if p.ndim != 2 or p.shape[1] != d:
      raise _error(f"Prompt {name} has shape {p.shape}; the model needs [P, {d}].")
  data = {t: (target_prompts[t], target_inputs(t, args.split, args.num_examples,
                                                args.input_length)) for t in targets}
  mats = similarity.matrices(model.config, frozen, prompts, data, pooling=args.pooling,
                             batch_size=args.batch_size)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for metric in METRICS:
    write_csv(out / f"{metric}.csv", mats[metric], list(prompts), list(targets))
  plot_heatmaps(out / "transferability.png", mats, list(prompts), list(targets))
  for metric in METRICS:
    print(f"{metric}: " + "; ".join(
        f"{s}->{t}={mats[metric][i, j]:.3f}" for i, s in enumerate(prompts)
        for j, t in enumerate(targets)))
  print(f"wrote {', '.join(f'{m}.csv' for m in METRICS)} and transferability.png to {out}")
  return mats


def main(argv: Sequence[str] | None = None) -> int:
  from prompt_jax import cli
  logging.basicConfig(level=logging.WARNING)
  try:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
  except SystemExit as e:  # argparse: a missing or unknown flag.
    return 2 if e.code else 0
  try:
    run(args)
  except Exception as e:  # pylint: disable=broad-except  One exit path, as the CLI's.
    return cli._report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main())
