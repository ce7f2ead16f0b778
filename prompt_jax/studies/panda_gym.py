"""PANDA-style transfer on the skill gym: PT vs PoT vs KD, and which metric predicts the gain.

  python -m prompt_jax.studies.panda_gym --out /tmp/panda_gym          # the README's table
  python -m prompt_jax.studies.panda_gym --sources copy,upper --targets reverse --out /tmp/p

On the demo's frozen multi-skill backbone (`prompt_jax.demo`, built once and cached):

1. a source prompt is tuned on `skill_gym_<s>_noword` for each source skill
   (`--source_steps`), and a plain prompt (PT) on each target skill (`--target_steps`,
   the target budget; it is also the target prompt P_T the metrics compare with);
2. the three transferability metrics (prompt_jax.prompts.similarity: PANDA-style s(S, T),
   E_avg, ON) are computed for every source x target pair over `--num_examples` target
   validation inputs;
3. for every pair with source != target: PoT (the target prompt starts from the source
   prompt, same budget) and PANDA-style KD (a fresh student with PT's init, the PoT prompt
   as the frozen teacher, `L = CE + lambda * MSE` on the decoder logits at the target
   positions, `lambda = beta * max(s(S, T), 0)`, `--beta`; `--paper_scaling` adds PANDA's code's
   0.1 / B factor);
4. scores: greedy exact match (percent) on `--test_examples` held-out test rows; the transfer
   gain of a pair is PoT - PT; the Spearman correlation of each metric with the gain over all
   pairs (scipy), and PT / PoT / KD per target (mean over its sources).

Every run goes through the library's trainer with the method's pieces on the seam
(`initializers.FromRun` for PoT, `panda.TeacherPrompt` + `panda.param_groups` +
`panda.KDLoss` for KD). Writes `<out>/results.json`, `<out>/table.md`, `<out>/panda_gym.png`
(metric vs gain scatter) and the metric matrices `<out>/{panda,e_avg,on}.csv`. These are
skill-gym results, never the paper's benchmarks.
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
from prompt_jax import transferability as tr_cli
from prompt_jax.checkpoints import load_pretrained
from prompt_jax.data import skill_gym as gym
from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt, init_prompt_params, initializers, panda, similarity
from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import inputs, trainer
from prompt_jax.train import optimizer as opt_lib

SOURCES = ("copy", "reverse", "shift_1", "upper", "shift_2", "sort")
TARGETS = ("copy", "reverse", "shift_1", "upper")
METRIC_NAMES = {"panda": "PANDA-style s(S,T)", "e_avg": "E_avg", "on": "ON"}


class Study:
  """The backbone, its data and one evaluator per target (compiled once)."""

  def __init__(self, args: argparse.Namespace):
    self.args, self.bb = args, demo.BackboneConfig()
    skills = sorted(set(args.sources) | set(args.targets))
    lengths = [demo.register_data(self.bb, s) for s in skills]
    self.lengths = {use: {k: max(x[use][k] for x in lengths) for k in ("inputs", "targets")}
                    for use in ("mixture", "prompt")}
    backbone = demo.ensure_backbone(self.bb, demo.default_cache_root(), self.lengths["mixture"])
    self.model, self.frozen = load_pretrained(backbone)
    self.d = self.model.config.d_model
    self.eval_len = demo.eval_lengths(self.lengths)
    self.served = T5Transformer(self.model.config, prompt=Prompt(args.length))
    self.evaluators = {}

  def init(self) -> initializers.Initializer:
    return initializers.SampledVocab(demo.ASCII_POPULATION).bind(
        initializers.Pretrained(np.asarray(self.frozen["token_embedder"]["embedding"]),
                                gym.VOCAB))

  def train(self, skill: str, run_dir: pathlib.Path, steps: int, module, *,
            loss_terms=(), groups=opt_lib.PROMPT_TUNING) -> np.ndarray:
    """Tunes `module` on the skill's no-word task; returns the exported prompt [P, D]."""
    init_all = init_prompt_params(module, jax.random.PRNGKey(self.args.seed), self.d)
    trainable = {"prompt": {"prompt": init_all["prompt"]}}
    frozen = dict(self.frozen)
    if len(init_all) > 1:
      frozen["prompt"] = {k: v for k, v in init_all.items() if k != "prompt"}
    adapter = adapter_lib.ModelAdapter(T5Transformer(self.model.config, prompt=module),
                                       loss_terms=tuple(loss_terms))
    trainer.train(adapter, frozen, trainable, groups=groups,
                  batches=inputs.batch_factory(gym.task_name(skill, with_word=False),
                                               split="train",
                                               task_feature_lengths=self.lengths["prompt"],
                                               batch_size=self.args.batch_size,
                                               seed=self.args.seed),
                  cfg=trainer.TrainerConfig(model_dir=str(run_dir), train_steps=steps,
                                            checkpoint_period=steps, log_period=steps,
                                            seed=self.args.seed, enable_dropout=False,
                                            progress_bar=False))
    return initializers.load_npy_prompt(initializers.run_prompt_path(run_dir, "latest"))

  def score(self, skill: str, prompt: np.ndarray) -> float:
    """Greedy exact match (%) of a prompt on the skill's held-out test rows."""
    if skill not in self.evaluators:
      rows = demo.eval_rows(self.bb, skill, "test", self.args.test_examples, with_word=False)
      self.evaluators[skill] = demo.make_evaluator(
          self.served, self.frozen, gym.task_name(skill, False), rows, self.eval_len, 128)
    return demo.exact_match(self.evaluators[skill], {"prompt": {"prompt": prompt}})[0]

  def metric_inputs(self, skill: str) -> np.ndarray:
    rows = demo.eval_rows(self.bb, skill, "validation", self.args.num_examples,
                          with_word=False)
    ex = demo.as_examples(rows)
    tokens = np.zeros((len(ex), self.eval_len["inputs"]), np.int32)
    for i, e in enumerate(ex):
      tokens[i, :len(e["inputs"])] = e["inputs"]
    return tokens


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rho (scipy), NaN when either side is constant."""
  from scipy import stats
  if len(set(x)) < 2 or len(set(y)) < 2:
    return float("nan")
  return float(stats.spearmanr(x, y).statistic)


def run_study(args: argparse.Namespace, log=print) -> dict[str, Any]:
  out = pathlib.Path(args.out)
  study, t_start = Study(args), time.perf_counter()
  walls: dict[str, float] = {}
  prompts, pt, t0 = {}, {}, time.perf_counter()
  for s in args.sources:
    prompts[s] = study.train(s, out / "source" / s, args.source_steps,
                             Prompt(args.length, initializer=study.init()))
    log(f"source {s}: exact match {study.score(s, prompts[s]):.1f} "
        f"({args.source_steps} steps)")
  walls["sources"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  for t in args.targets:
    p_t = study.train(t, out / "pt" / t, args.target_steps,
                      Prompt(args.length, initializer=study.init()))
    pt[t] = {"prompt": p_t, "score": study.score(t, p_t)}
    log(f"PT {t}: {pt[t]['score']:.1f}")
  walls["pt"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  mats = similarity.matrices(study.model.config, study.frozen, prompts,
                             {t: (pt[t]["prompt"], study.metric_inputs(t)) for t in args.targets},
                             pooling=args.pooling)
  for m in tr_cli.METRICS:
    tr_cli.write_csv(out / f"{m}.csv", mats[m], list(args.sources), list(args.targets))
  walls["metrics"] = time.perf_counter() - t0
  pairs, t0 = [], time.perf_counter()
  for j, t in enumerate(args.targets):
    for i, s in enumerate(args.sources):
      if s == t:
        continue
      pot_dir = out / "pot" / f"{s}-{t}"
      pot = study.train(t, pot_dir, args.target_steps, Prompt(
          args.length, initializer=initializers.FromRun(str(out / "source" / s), "latest")))
      sim = float(mats["panda"][i, j])
      kd = panda.KDLoss(beta=args.beta, similarity=sim, paper_scaling=args.paper_scaling)
      student = panda.TeacherPrompt(args.length, initializer=study.init(),
                                    teacher_initializer=initializers.FromRun(str(pot_dir),
                                                                             "latest"))
      kd_prompt = study.train(t, out / "kd" / f"{s}-{t}", args.target_steps, student,
                              loss_terms=panda.kd_loss_terms(kd),
                              groups=panda.param_groups(0.3))
      row = {"source": s, "target": t, "pt": pt[t]["score"], "pot": study.score(t, pot),
             "kd": study.score(t, kd_prompt), "lambda": kd.lam(),
             **{m: float(mats[m][i, j]) for m in tr_cli.METRICS}}
      row["gain"] = row["pot"] - row["pt"]
      pairs.append(row)
      log(f"{s} -> {t}: PT {row['pt']:.1f} PoT {row['pot']:.1f} KD {row['kd']:.1f} "
          f"s={sim:.3f} E_avg={row['e_avg']:.3f} ON={row['on']:.3f}")
  walls["pairs"] = time.perf_counter() - t0
  walls["total"] = time.perf_counter() - t_start
  gains = [r["gain"] for r in pairs]
  rho = {m: spearman([r[m] for r in pairs], gains) for m in tr_cli.METRICS}
  result = {"args": vars(args), "pairs": pairs, "spearman": rho, "seconds": walls}
  (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
  (out / "table.md").write_text(format_tables(result) + "\n")
  plot(out / "panda_gym.png", pairs, rho)
  log(format_tables(result))
  return result


def format_tables(result: dict[str, Any]) -> str:
  pairs, rho = result["pairs"], result["spearman"]
  lines = ["| metric | Spearman rho with the PoT gain |", "|---|---|"]
  lines += [f"| {METRIC_NAMES[m]} | {v:.3f} |" for m, v in rho.items()]
  lines += ["", "| target | PT | PoT (mean over sources) | KD (mean) | best PoT | best KD |",
            "|---|---|---|---|---|---|"]
  targets = list(dict.fromkeys(r["target"] for r in pairs))
  for t in targets + ["average"]:
    rows = [r for r in pairs if t in (r["target"], "average")]
    pt = np.mean([r["pt"] for r in rows])
    lines.append(f"| {t} | {pt:.1f} | {np.mean([r['pot'] for r in rows]):.1f} | "
                 f"{np.mean([r['kd'] for r in rows]):.1f} | "
                 f"{max(r['pot'] for r in rows):.1f} | {max(r['kd'] for r in rows):.1f} |")
  lines += ["", "| source -> target | PT | PoT | KD | gain (PoT-PT) | s(S,T) | E_avg | ON | lambda |",
            "|---|---|---|---|---|---|---|---|---|"]
  lines += [f"| {r['source']} -> {r['target']} | {r['pt']:.1f} | {r['pot']:.1f} | "
            f"{r['kd']:.1f} | {r['gain']:+.1f} | {r['panda']:.3f} | {r['e_avg']:.3f} | "
            f"{r['on']:.3f} | {r['lambda']:.3f} |" for r in pairs]
  return "\n".join(lines)


def plot(path: pathlib.Path, pairs: list[dict[str, Any]], rho: dict[str, float]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
  gains = [r["gain"] for r in pairs]
  for ax, m in zip(axes, tr_cli.METRICS):
    ax.scatter([r[m] for r in pairs], gains, s=18)
    for r in pairs:
      ax.annotate(f"{r['source']}>{r['target']}", (r[m], r["gain"]), fontsize=5)
    ax.set_xlabel(METRIC_NAMES[m])
    ax.set_title(f"Spearman rho = {rho[m]:.2f}", fontsize=9)
  axes[0].set_ylabel("PoT gain over PT (exact match, pts)")
  fig.suptitle("skill gym: transferability metric vs transfer gain", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  csv_list = lambda s: tuple(x for x in s.split(",") if x)
  p.add_argument("--sources", type=csv_list, default=SOURCES)
  p.add_argument("--targets", type=csv_list, default=TARGETS)
  p.add_argument("--source_steps", type=int, default=100)
  p.add_argument("--target_steps", type=int, default=20)
  p.add_argument("--length", type=int, default=16)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--beta", type=float, default=1.0)
  p.add_argument("--paper_scaling", action="store_true")
  p.add_argument("--pooling", default="tokens", choices=similarity.POOLINGS)
  p.add_argument("--num_examples", type=int, default=100)
  p.add_argument("--test_examples", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="/tmp/panda_gym")
  args = p.parse_args(argv)
  unknown = [s for s in (*args.sources, *args.targets) if s not in gym.SKILLS]
  if unknown:
    p.error(f"unknown skill(s) {unknown}; `prompt-jax tasks` lists them")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.WARNING)
  run_study(parse_args(argv))
  return 0


if __name__ == "__main__":
  sys.exit(main())
