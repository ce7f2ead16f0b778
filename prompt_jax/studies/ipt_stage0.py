"""IPT stage 0: one prompt per task for a list of tasks, and the manifest MSF reads.

  python -m prompt_jax.studies.ipt_stage0 --mode separate --out /runs/stage0 \\
      --tasks task_a,task_b,... \\
      --gin_file=models/t5_1_1_lm_adapted.gin --gin_file=models/sizes/base.gin \\
      --gin_file=methods/prompt_tuning.gin --gin_file=prompts/sampled_vocab.gin \\
      --gin_file=runs/prompt_finetune.gin --gin.INITIAL_CHECKPOINT_PATH="'/ckpt'"
  python -m prompt_jax.studies.ipt_stage0 --mode bank --out /runs/stage0 --mixture my_mix \\
      --gin_file=methods/prompt_bank.gin ...  (the rest as above)

Two modes, both ordinary `prompt-jax train` runs from the same gin files:

* `separate`: one run per task in `<out>/<task>/` (MODEL_DIR and MIXTURE_OR_TASK_NAME set
  per task). Resumable: a finished task (its `stage0_done.json`) is skipped, an interrupted
  one resumes from its last checkpoint, so rerunning the same command finishes the list.
  This is the paper's stage 0: every prompt has its own optimizer and data stream.
* `bank`: one `PromptBank` run over a mixture in `<out>/bank/` (methods/prompt_bank.gin):
  every task's prompt trains at once in mixed batches, each row getting only its own
  examples' gradient. Faster (one compile, one data pipeline, all tasks per step) but not
  the same optimisation: each task sees on average BATCH_SIZE / T examples per step (so it
  needs about T times the steps for the same number of examples per task), and Adafactor's
  update clipping (clipping_threshold) and AdamW's global-norm clipping act on the whole
  bank, which couples the tasks' step sizes. Resumable like any run.

Either way `<out>/stage0.json` lists each task's prompt file ({"prompts": {task: path
relative to <out>}}); `methods/ipt_msf.gin` reads it (IPT_BANK_MANIFEST).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from typing import Any, Sequence

from prompt_jax import cli
from prompt_jax.prompts.ipt import MANIFEST_NAME, resolve_prompt_file
from prompt_jax.train import checkpointing

DONE_NAME = "stage0_done.json"


def _train(gin_files: Sequence[str], bindings: Sequence[str], search_paths: str = "") -> Any:
  from prompt_jax import runs
  cli.parse_gin(gin_files, bindings, search_paths)
  return runs.train()


def write_manifest(out: pathlib.Path, prompts: dict[str, pathlib.Path], mode: str) -> pathlib.Path:
  """`<out>/stage0.json`: {"mode", "prompts": {task: path relative to out}} (atomic)."""
  table = {t: str(pathlib.Path(p).resolve().relative_to(out.resolve()))
           for t, p in sorted(prompts.items())}
  path = out / MANIFEST_NAME
  checkpointing.write_json(path, {"mode": mode, "prompts": table})
  return path


def run_separate(tasks: Sequence[str], out: pathlib.Path, gin_files: Sequence[str],
                 bindings: Sequence[str] = (), search_paths: str = "") -> dict[str, Any]:
  """One prompt-tuning run per task (skips finished ones); {task: final eval metrics}."""
  out.mkdir(parents=True, exist_ok=True)
  done: dict[str, pathlib.Path] = {}
  metrics: dict[str, Any] = {}
  for task in tasks:
    run = out / task
    marker = run / DONE_NAME
    if marker.exists():
      logging.info("stage 0: %s is done (%s), skipped.", task, marker)
      metrics[task] = json.loads(marker.read_text())["eval"]
    else:
      logging.info("stage 0: training %s in %s", task, run)
      result = _train(gin_files, [*bindings, f"MODEL_DIR = '{run}'",
                                  f"MIXTURE_OR_TASK_NAME = '{task}'"], search_paths)
      metrics[task] = result.last_eval_metrics
      checkpointing.write_json(marker, {"step": result.step, "eval": metrics[task]})
    done[task] = resolve_prompt_file(run)
    write_manifest(out, done, "separate")  # After each task: progress is visible.
  return metrics


def run_bank(mixture: str, out: pathlib.Path, gin_files: Sequence[str],
             bindings: Sequence[str] = (), search_paths: str = "") -> dict[str, Any]:
  """One PromptBank run over `mixture`; the manifest points at its per-task exports."""
  run = out / "bank"
  result = _train(gin_files, [*bindings, f"MODEL_DIR = '{run}'",
                              f"MIXTURE_OR_TASK_NAME = '{mixture}'"], search_paths)
  names = json.loads((run / "tasks.json").read_text())["task_names"]
  prompts = {t: run / "prompts" / t / f"prompt_{result.step}.npy" for t in names}
  missing = [str(p) for p in prompts.values() if not p.exists()]
  if missing:
    raise FileNotFoundError(f"The bank run did not export per-task prompts {missing[:3]}; "
                            "use methods/prompt_bank.gin for --mode bank.")
  write_manifest(out, prompts, "bank")
  return result.last_eval_metrics


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  bindings, rest = cli._split_gin_flags(list(argv))  # The CLI's own --gin.X=Y parsing.
  p = argparse.ArgumentParser(prog="python -m prompt_jax.studies.ipt_stage0",
                              description=__doc__.split("\n")[0])
  p.add_argument("--mode", choices=("separate", "bank"), default="separate")
  p.add_argument("--out", required=True)
  p.add_argument("--tasks", default="", help="comma-separated task names (--mode separate)")
  p.add_argument("--mixture", default="", help="a mixture of the tasks (--mode bank)")
  p.add_argument("--gin_file", action="append", default=[])
  p.add_argument("--gin_search_paths", default="")
  return p.parse_args(rest), bindings


def main(argv: Sequence[str] | None = None) -> int:
  args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  out = pathlib.Path(args.out)
  try:
    if args.mode == "separate":
      tasks = [t for t in args.tasks.split(",") if t]
      if not tasks:
        raise cli.CliError("--mode separate needs --tasks a,b,c.")
      run_separate(tasks, out, args.gin_file, bindings, args.gin_search_paths)
    else:
      if not args.mixture:
        raise cli.CliError("--mode bank needs --mixture (a mixture of the tasks).")
      run_bank(args.mixture, out, args.gin_file, bindings, args.gin_search_paths)
  except Exception as e:  # pylint: disable=broad-except  The CLI's one exit path.
    return cli._report(e)
  print(out / MANIFEST_NAME)
  return 0


if __name__ == "__main__":
  sys.exit(main())
