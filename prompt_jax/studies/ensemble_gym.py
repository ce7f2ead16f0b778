"""Prompt ensembling on the skill gym: N prompts (seeds) on one skill, mean / best / ensemble.

  python -m prompt_jax.studies.ensemble_gym                       # reverse, 5 seeds, 40 steps
  python -m prompt_jax.studies.ensemble_gym --skill shift_1 --members 3 --out /tmp/ens_gym
  python -m prompt_jax.studies.ensemble_gym --cli_timing          # + N `eval` processes vs 1

On the demo's frozen multi-skill backbone (`prompt_jax.demo`: built once and cached), N
prompts are tuned on `skill_gym_<skill>_noword` with seeds 0..N-1 (the demo's prompt stage:
sampled-vocab init, LR 0.3, best on validation), with a short budget so that the members are
imperfect and disagree. Each member is then scored alone (greedy exact match, percent, on
held-out test rows) and the N of them as a one-pass ensemble (`prompt_jax.train.ensemble`,
majority vote): Lester et al.'s Table 3 columns (mean of N, best of N, ensemble).

Wall clock, in this process: N separate evaluations (one single-prompt evaluator each; the
compiled decoder is shared, as equal adapters share it) against one ensemble pass, each
timed cold (first call: compiles included) and warm (median of `--repeats` interleaved
rounds, `bench.time_in_rounds`).
With `--cli_timing` also N `prompt-jax eval` processes against one `prompt-jax eval
--gin.PROMPT_FILES=[...]` process (what a user waits for; the CLI's task is the gym's
registered test split, so its scores differ from the table's rows).

Writes `<out>/results.json` and `<out>/table.md`. These are skill-gym results, never the
paper's benchmarks.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import subprocess
import sys
import time
from typing import Sequence

import numpy as np

from prompt_jax import bench, demo
from prompt_jax.checkpoints import load_pretrained
from prompt_jax.data import skill_gym as gym
from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt
from prompt_jax.train import ensemble, evaluation


class _Timed:
  """A `bench.time_in_rounds` runner: one call of `fn` per step."""

  def __init__(self, fn):
    self.fn = fn

  def step(self) -> float:
    t0 = time.perf_counter()
    self.fn()
    return time.perf_counter() - t0


def _cold(fn):
  """(result of the first call, its seconds: compiles included)."""
  t0 = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - t0


def cli_timing(backbone: pathlib.Path, files: Sequence[pathlib.Path], skill: str,
               out: pathlib.Path, batch_size: int) -> dict[str, float]:
  """Seconds of N single-prompt `prompt-jax eval` processes and of one ensemble process."""
  base = [sys.executable, "-m", "prompt_jax", "eval", "--gin_file=runs/prompt_eval.gin",
          f"--gin.INITIAL_CHECKPOINT_PATH='{backbone}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{gym.task_name(skill, False)}'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 12}",
          "--gin.EVAL_SPLIT='test'", f"--gin.BATCH_SIZE={batch_size}"]

  def run(args):
    t0 = time.perf_counter()
    proc = subprocess.run(base + args, capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(proc.stderr[-2000:])
    return time.perf_counter() - t0

  separate = sum(run([f"--gin.MODEL_DIR='{out / 'cli' / f'member_{i}'}'",
                      f"--gin.PROMPT_FILE='{f}'"]) for i, f in enumerate(files))
  listing = "[" + ", ".join(f"'{f}'" for f in files) + "]"
  one = run([f"--gin.MODEL_DIR='{out / 'cli' / 'ensemble'}'", f"--gin.PROMPT_FILES={listing}"])
  return {"cli_separate_s": separate, "cli_ensemble_s": one}


def run_study(skill: str, members: int, steps: int, out: pathlib.Path, *,
              test_examples: int, repeats: int, with_cli: bool) -> dict:
  bb = demo.BackboneConfig()
  lengths = demo.register_data(bb, skill)
  backbone = demo.ensure_backbone(bb, demo.default_cache_root(), lengths["mixture"])
  model, frozen = load_pretrained(backbone)
  files = []
  for seed in range(members):
    pc = demo.PromptConfig(skill=skill, train_steps=steps, seed=seed,
                           eval_period=max(1, steps // 4))
    run_dir = out / f"seed_{seed}"
    best = run_dir / "prompts" / "prompt_best.npy"
    if not best.exists():
      demo.prepare_run_dir(run_dir, bb, pc, overwrite=True)
      demo.tune_prompt(pc, bb, model, frozen, run_dir, lengths)
    files.append(best)
  task = gym.task_name(skill, with_word=False)
  exs = demo.as_examples(demo.eval_rows(bb, skill, "test", test_examples, with_word=False))
  ev_lengths = demo.eval_lengths(lengths)
  stacked = ensemble.load_members(files)
  batch = demo.PromptConfig().eval_batch_size
  single = evaluation.Evaluator(T5Transformer(model.config, prompt=Prompt(stacked.shape[1])),
                                frozen, [task], split="", feature_lengths=ev_lengths,
                                batch_size=batch, examples={task: exs})
  run_separate = lambda: [single.evaluate_task({"prompt": {"prompt": p}}, task) for p in stacked]
  separate, sep_cold = _cold(run_separate)
  ens = ensemble.EnsembleEvaluator(model.config, frozen, stacked, [task],
                                   feature_lengths=ev_lengths, batch_size=batch,
                                   examples={task: exs})
  result, ens_cold = _cold(lambda: ens.evaluate_task(task))
  # Warm: the two take turns, one call each per round (a shared machine's load hits both).
  warm = bench.time_in_rounds({"separate": _Timed(run_separate),
                               "ensemble": _Timed(lambda: ens.evaluate_task(task))},
                              steps=repeats, warmup=0)
  sep_warm, ens_warm = warm["separate"], warm["ensemble"]
  assert [r.predictions for r in result.members] == [r.predictions for r in separate]
  member_em = [r.metrics["exact_match"] for r in result.members]
  summary = {
      "skill": skill, "members": members, "prompt_steps": steps, "test_examples": len(exs),
      "member_exact_match": member_em, "mean": float(np.mean(member_em)),
      "best": float(np.max(member_em)), "ensemble": result.ensemble.metrics["exact_match"],
      "separate_cold_s": sep_cold, "separate_warm_s": sep_warm,
      "ensemble_cold_s": ens_cold, "ensemble_warm_s": ens_warm,
      "eval_batch_rows": batch, "prompt_files": [str(f) for f in files],
  }
  if with_cli:
    summary.update(cli_timing(backbone, files, skill, out, batch))
  return summary


def table(s: dict) -> str:
  lines = [
      f"Skill-gym result (not a paper benchmark): {s['members']} prompts on "
      f"{s['skill']}_noword, {s['prompt_steps']} steps each, {s['test_examples']} test rows, "
      "greedy exact match (%).", "",
      f"| members | mean of {s['members']} | best of {s['members']} | ensemble |",
      "|---|---|---|---|",
      f"| {', '.join(f'{v:.1f}' for v in s['member_exact_match'])} | {s['mean']:.1f} | "
      f"{s['best']:.1f} | {s['ensemble']:.1f} |", "",
      f"| wall clock (s) | {s['members']} separate evals | one-pass ensemble |", "|---|---|---|",
      f"| cold (compiles included) | {s['separate_cold_s']:.2f} | {s['ensemble_cold_s']:.2f} |",
      f"| warm | {s['separate_warm_s']:.2f} | {s['ensemble_warm_s']:.2f} |"]
  if "cli_separate_s" in s:
    lines.append(f"| `prompt-jax eval` processes | {s['cli_separate_s']:.1f} | "
                 f"{s['cli_ensemble_s']:.1f} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="ensemble_gym", description=__doc__.split("\n\n")[0])
  p.add_argument("--skill", default="reverse")
  p.add_argument("--members", type=int, default=5)
  p.add_argument("--steps", type=int, default=40, help="prompt-tuning steps per member")
  p.add_argument("--test_examples", type=int, default=500)
  p.add_argument("--repeats", type=int, default=5, help="warm timing rounds (median)")
  p.add_argument("--cli_timing", action="store_true")
  p.add_argument("--out", default="ensemble_gym_runs")
  args = p.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)
  out = pathlib.Path(args.out)
  summary = run_study(args.skill, args.members, args.steps, out,
                      test_examples=args.test_examples, repeats=args.repeats,
                      with_cli=args.cli_timing)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
  (out / "table.md").write_text(table(summary) + "\n")
  print(table(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
