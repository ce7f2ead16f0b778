"""EPT-style on the skill gym: five prompts at one trainable budget, accuracy and step time.

  python -m prompt_jax.studies.ept_gym                      # reverse and shift_1, 200 steps
  python -m prompt_jax.studies.ept_gym --skills upper --steps 100 --out /tmp/ept_gym

On the demo's frozen multi-skill backbone (`prompt_jax.demo`: built once and cached), a
fresh prompt is tuned on `skill_gym_<skill>_noword` for each of:

  prompt_100        a plain 100-token prompt (Lester et al.), the budget: 100 x D parameters
  dept              DePT: S = 60 + A [L_max, R] B [R, D], R budget-matched
  dept_fusion       DePT + prompt fusion (our design, see prompt_jax/prompts/ept.py)
  dept_multispace   DePT + multi-space projection (our design)
  ept               EPT-style: both (S = 40, as gin/methods/ept.gin)

All start from sampled-vocab rows, train with the library's trainer (the prompt at LR 0.3,
the low-rank and fusion / projection weights at `--low_rank_lr`), and are scored by greedy
exact match (percent) on held-out test rows, once with the training module and once as
exported (`.npy` prompt + input offset in an `OffsetPrompt`); validation exact match (128
rows) every `--eval_period` steps gives the learning curve. Step time: each method's
compiled train step and teacher-forced eval step on one gym batch, timed in rounds (one
step of each method per round, `prompt_jax.bench.time_in_rounds`), so a shared machine's
load hits every method alike; the median of `--timing_rounds` rounds.

Writes `<out>/results.json`, `<out>/table.md` and `<out>/ept_gym.png` (accuracy and step
time per method and skill). These are skill-gym results, never the paper's benchmarks.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from prompt_jax import demo
from prompt_jax.checkpoints import load_pretrained
from prompt_jax.data import skill_gym as gym
from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt, ept, init_prompt_params, initializers
from prompt_jax.prompts import effective
from prompt_jax import bench
from prompt_jax.train import builder, inputs, trainer
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train.metrics_writer import read_metrics

BUDGET = 100
METHODS = {  # name -> EPTPrompt switches (None: the plain prompt).
    "prompt_100": None,
    "dept": dict(length=60),
    "dept_fusion": dict(length=60, fusion=True),
    "dept_multispace": dict(length=60, num_subspaces=4),
    "ept": dict(length=40, fusion=True, num_subspaces=4),
}


def make_module(name: str, max_length: int, embedding: np.ndarray):
  """The method's prompt module, its initializer bound to the backbone's embedding."""
  init = initializers.SampledVocab(demo.ASCII_POPULATION)
  switches = METHODS[name]
  module = (Prompt(BUDGET, initializer=init) if switches is None else
            ept.EPTPrompt(max_length=max_length, budget_length=BUDGET, initializer=init,
                          **switches))
  return initializers.bind_initializers(module, initializers.Pretrained(embedding, gym.VOCAB))


def groups_for(name: str, low_rank_lr: float) -> opt_lib.ParamGroups:
  if METHODS[name] is None:
    return opt_lib.PROMPT_TUNING
  return ept.param_groups(0.3, low_rank_lr, low_rank_lr)


def served_model(model: T5Transformer, exported: dict[str, np.ndarray]):
  """(model, trainable) rebuilt from the exported arrays, as `prompt-jax eval` does."""
  p = exported["prompt"]
  if ept.OFFSET_EXPORT not in exported:
    return T5Transformer(model.config, prompt=Prompt(p.shape[0])), {"prompt": {"prompt": p}}
  offset = exported[ept.OFFSET_EXPORT]
  return (T5Transformer(model.config, prompt=ept.OffsetPrompt(p.shape[0], offset.shape[0])),
          {"prompt": {"prompt": p, ept.OFFSET_EXPORT: offset}})


def run_one(name: str, skill: str, args: argparse.Namespace, backbone: Any,
            lengths: dict, out: pathlib.Path) -> dict[str, Any]:
  """Trains one method on one skill; returns its row of the table."""
  model, frozen = backbone
  bb = demo.BackboneConfig()
  eval_len = demo.eval_lengths(lengths)
  module = make_module(name, eval_len["inputs"], np.asarray(frozen["token_embedder"]["embedding"]))
  prompted = T5Transformer(model.config, prompt=module)
  init = {"prompt": init_prompt_params(module, jax.random.PRNGKey(args.seed), model.config.d_model)}
  run_dir = out / skill / name
  task = gym.task_name(skill, with_word=False)
  val = demo.make_evaluator(prompted, frozen, task, demo.eval_rows(
      bb, skill, "validation", 128, with_word=False), eval_len, 128)
  curve = {}

  def evaluator(trainable, step):
    curve[step] = demo.exact_match(val, trainable)[0]
    return {"exact_match": curve[step]}

  t0 = time.perf_counter()
  result = trainer.train(
      prompted, frozen, init, groups=groups_for(name, args.low_rank_lr),
      batches=inputs.batch_factory(task, split="train", task_feature_lengths=lengths["prompt"],
                                   batch_size=args.batch_size, seed=args.seed),
      cfg=trainer.TrainerConfig(model_dir=str(run_dir), train_steps=args.steps,
                                checkpoint_period=args.steps, log_period=10, seed=args.seed,
                                eval_period=args.eval_period, enable_dropout=False,
                                progress_bar=False), evaluator=evaluator)
  wall = time.perf_counter() - t0
  train = [m for m in read_metrics(run_dir) if m["split"] == "train"]
  rows = demo.eval_rows(bb, skill, "test", args.test_examples, with_word=False)
  ev = demo.make_evaluator(prompted, frozen, task, rows, eval_len, 128)
  em, _ = demo.exact_match(ev, result.trainable)
  exported = {"prompt": effective.effective_prompt(prompted, result.trainable),
              **effective.effective_exports(prompted, result.trainable)}
  served, trainable = served_model(prompted, exported)
  em_export, _ = demo.exact_match(demo.make_evaluator(served, frozen, task, rows, eval_len, 128),
                                  trainable)
  gate = [train[-1][k] for k in sorted(train[-1]) if k.startswith("diag/")]
  row = {"method": name, "skill": skill, "exact_match": em, "exact_match_exported": em_export,
         "validation_curve": curve, "wall_s": wall, "final_loss": train[-1]["loss"],
         "trainable": opt_lib.count_params(result.trainable),
         "short_length": exported["prompt"].shape[0],
         "rank": (module.resolved_rank(model.config.d_model) if METHODS[name] else 0),
         "gate": gate}
  logging.info("%s", row)
  return row


class _StepRunner:
  """One method's compiled train (or eval) step on a fixed gym batch (bench's Runner)."""

  def __init__(self, module, model, frozen, batch, groups, eval_step: bool):
    prompted = T5Transformer(model.config, prompt=module)
    setup = builder.build(prompted, groups, builder.make_mesh(1, jax.devices()[:1]),
                          enable_dropout=False)
    init = {"prompt": init_prompt_params(module, jax.random.PRNGKey(0), model.config.d_model)}
    self.eval_step, self.frozen = eval_step, setup.put_frozen(frozen)
    self.batch = setup.put_batch(batch)
    self.state = (jax.device_put(init, setup.trainable_sharding) if eval_step
                  else setup.init_state(init, 0))
    fn = setup.eval_fn if eval_step else setup.step_fn
    self.fn = fn.lower(self.state, self.frozen, self.batch).compile()

  def step(self) -> float:
    t0 = time.perf_counter()
    if self.eval_step:
      jax.block_until_ready(self.fn(self.state, self.frozen, self.batch))
    else:
      self.state, sums = self.fn(self.state, self.frozen, self.batch)
      jax.block_until_ready((self.state, sums))
    return time.perf_counter() - t0


def time_steps(skill: str, args: argparse.Namespace, backbone: Any, lengths: dict
               ) -> dict[str, dict[str, float]]:
  """{method: {"train_s", "eval_s"}}: median step seconds, all methods timed in rounds."""
  model, frozen = backbone
  task = gym.task_name(skill, with_word=False)
  batch = next(inputs.batch_factory(task, split="train", task_feature_lengths=lengths["prompt"],
                                    batch_size=args.batch_size, seed=args.seed)(0))
  max_length = demo.eval_lengths(lengths)["inputs"]
  embedding = np.asarray(frozen["token_embedder"]["embedding"])
  out: dict[str, dict[str, float]] = {name: {} for name in args.methods}
  for kind in ("train", "eval"):
    runners = {name: _StepRunner(make_module(name, max_length, embedding), model, frozen, batch,
                                 groups_for(name, args.low_rank_lr), kind == "eval")
               for name in args.methods}
    for name, s in bench.time_in_rounds(runners, args.timing_rounds, 3, pause_s=0.01).items():
      out[name][f"{kind}_s"] = s
  return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table: one line per (skill, method)."""
  base = {r["skill"]: r for r in rows if r["method"] == "prompt_100"}
  lines = ["| skill | method | S | R | trainable | val. EM % by step | test EM % | exported "
           "% | train step ms (x P=100) | eval step ms (x P=100) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    b = base.get(r["skill"], r)
    curve = " / ".join(f"{v:.0f}" for _, v in sorted(r["validation_curve"].items(),
                                                      key=lambda kv: int(kv[0])))
    lines.append(
        f"| {r['skill']} | {r['method']} | {r['short_length']} | {r['rank']} | "
        f"{r['trainable']:,} | {curve} | {r['exact_match']:.1f} | "
        f"{r['exact_match_exported']:.1f} | {1000 * r['train_s']:.1f} "
        f"({r['train_s'] / b['train_s']:.2f}) | {1000 * r['eval_s']:.1f} "
        f"({r['eval_s'] / b['eval_s']:.2f}) |")
  return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  """Two bar panels: exact match and step time per method, one bar group per skill."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  skills = sorted({r["skill"] for r in rows})
  names = list(METHODS)
  fig = Figure(figsize=(10.0, 3.8))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  width = 0.8 / len(skills)
  for i, skill in enumerate(skills):
    by = {r["method"]: r for r in rows if r["skill"] == skill}
    xs = np.arange(len(names)) + i * width
    axes[0].bar(xs, [by[n]["exact_match"] for n in names], width, label=skill)
    axes[1].bar(xs, [1000 * by[n]["train_s"] for n in names], width, label=skill)
  for ax, ylabel in zip(axes, ("test exact match (%)", "train step (ms, median)")):
    ax.set_xticks(np.arange(len(names)) + width * (len(skills) - 1) / 2, names, rotation=20)
    ax.set_ylabel(ylabel)
    ax.legend()
  fig.suptitle(f"skill gym: {BUDGET} x D trainable parameters each (gym results)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m prompt_jax.studies.ept_gym",
                              description=__doc__.split("\n")[0])
  p.add_argument("--skills", nargs="+", default=["reverse", "shift_1"])
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--low_rank_lr", type=float, default=1e-2,
                 help="LR of A / B and the fusion / projection weights (the prompt's is 0.3).")
  p.add_argument("--test_examples", type=int, default=500)
  p.add_argument("--eval_period", type=int, default=50)
  p.add_argument("--timing_rounds", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cache_dir", default=None, help="backbone cache root (the demo's default)")
  p.add_argument("--out", default="ept_gym_runs")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="ept_gym %(message)s")
  logging.getLogger("absl").setLevel(logging.ERROR)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  bb = demo.BackboneConfig()
  cache = pathlib.Path(args.cache_dir or demo.default_cache_root()).expanduser()
  rows = []
  for skill in args.skills:
    lengths = demo.register_data(bb, skill)
    backbone_dir = demo.ensure_backbone(bb, cache, lengths["mixture"], log=logging.info)
    backbone = load_pretrained(backbone_dir)
    times = time_steps(skill, args, backbone, lengths)
    for name in args.methods:
      rows.append({**run_one(name, skill, args, backbone, lengths, out), **times[name]})
  table = format_table(rows)
  (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
  (out / "table.md").write_text(table + "\n")
  if set(args.methods) == set(METHODS):
    plot(rows, out / "ept_gym.png")
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
