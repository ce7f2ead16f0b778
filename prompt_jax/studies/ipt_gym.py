"""IPT on the skill gym: stage 0, MSF, IST over d_I, IPT -> PT vs PT (skill-gym results).

  python -m prompt_jax.studies.ipt_gym --out ipt_gym_runs            # the README's study
  python -m prompt_jax.studies.ipt_gym --out /tmp/ipt --dims 5 50    # fewer d_I values

Every stage is an ordinary `prompt-jax train` run (gin: runs/prompt_finetune.gin plus
methods/prompt_bank.gin, ipt_msf.gin, ipt_ist.gin), in-process, on a frozen tiny T5 that was
model-tuned on the with-word tasks of all 120 skills of the pool (the demo's backbone recipe,
cached). Each run dir resumes, so rerunning the same command continues where it stopped.

The split (deterministic, documented in the README): the pool is the 110 Latin skills plus
the 10 single Greek skills listed in `GREEK`; the 20 unseen skills are the pool's 20 smallest
`blake2b("ipt-unseen:" + name)` values, the other 100 are seen. "Seen, new data" uses 20 of
the seen skills (the 20 smallest `blake2b("ipt-seen-new:" + name)`) with a different data
seed. Few-shot: `--shots` training examples per skill (no task word), the test rows are the
gym's test split (disjoint strings).

Stages (all prompt banks: one run trains every task's prompt in mixed batches):
  stage0        PromptBank over the 100 seen skills (data seed 0): the MSF bank
  pt_seen_new   PromptBank over the 20 seen-new skills (data seed 1): PT reference
  pt_unseen     PromptBank over the 20 unseen skills: PT reference (and seeds for IPT -> PT)
  msf_<d>       MSFPrompt over the 100 seen skills, bank = stage 0, for each d_I
  ist_<d>_<set> per-task ISTPrompt (v [T, d_I]) on seen-new and unseen, Proj_b of msf_<d>
  ipt_pt_s<k>   IPT -> PT on the unseen skills from ist_<d*>_unseen, seed k
  pt_s<k>       PT on the unseen skills, same budget, seed k

Writes `<out>/results.json`, `<out>/table.md` and `<out>/ipt_gym.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import pathlib
import sys
import time
from typing import Any, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_jax import demo
from prompt_jax.data import skill_gym as gym

GREEK = ("greek_copy", "greek_reverse", "greek_sort", "greek_sortdesc", "greek_atbash",
         "greek_upper", "greek_dedupe", "greek_evens", "greek_odds", "greek_swappairs")
NUM_UNSEEN = 20
NUM_SEEN_NEW = 20
PREFIX = "ipt_gym_"


def skill_pool() -> list[str]:
  """The 120 skills of the study: every Latin skill and ten Greek ones."""
  return gym.skill_names("latin") + list(GREEK)


def _rank(salt: str, names: Sequence[str]) -> list[str]:
  key = lambda n: hashlib.blake2b(f"{salt}:{n}".encode(), digest_size=8).digest()
  return sorted(names, key=key)


def split_skills() -> dict[str, list[str]]:
  """{"seen": 100, "unseen": 20, "seen_new": 20 of the seen}, each sorted by name."""
  pool = skill_pool()
  unseen = sorted(_rank("ipt-unseen", pool)[:NUM_UNSEEN])
  seen = sorted(set(pool) - set(unseen))
  seen_new = sorted(_rank("ipt-seen-new", seen)[:NUM_SEEN_NEW])
  return {"seen": seen, "unseen": unseen, "seen_new": seen_new}


# ---------------------------------------------------------------------------------------
# Few-shot data.


@dataclasses.dataclass(frozen=True)
class FewShot:
  """dataset_fn of a few-shot no-word task: `shots` train rows with data seed `seed`."""
  skill: str
  seed: int
  config: gym.GymConfig

  def __call__(self, split: str, shuffle_files: bool, seed: int | None = None
               ) -> tf.data.Dataset:
    del shuffle_files, seed
    c = self.config
    rows = gym.examples(self.skill, split, c.num_examples()[split], self.seed, with_word=False,
                        min_len=c.min_len, max_len=c.max_len)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant([r["inputs"] for r in rows], tf.string),
        "targets": tf.constant([r["targets"] for r in rows], tf.string)})


def fewshot_task(skill: str, data_seed: int) -> str:
  return f"{PREFIX}{skill}_d{data_seed}"


def register_fewshot(skills: Sequence[str], data_seed: int, shots: int, test_rows: int,
                     max_len: int, mixture: str) -> list[str]:
  """Registers one few-shot task per skill and their mixture (equal rates); the names."""
  config = gym.GymConfig(train_examples=shots, validation_examples=test_rows,
                         test_examples=test_rows, seed=data_seed, max_len=max_len)
  names = [gym.register_source(fewshot_task(s, data_seed), FewShot(s, data_seed, config), config)
           for s in skills]
  if mixture in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(mixture)
  seqio.MixtureRegistry.add(mixture, names, default_rate=1.0)
  return names


def backbone_config(args: argparse.Namespace) -> demo.BackboneConfig:
  return demo.BackboneConfig(skills=tuple(skill_pool()), train_steps=args.backbone_steps,
                             batch_size=args.backbone_batch, d_model=args.d_model,
                             max_len=args.max_len, train_examples=args.backbone_examples)


def ensure_backbone(args: argparse.Namespace) -> pathlib.Path:
  """The tiny T5 model-tuned on the pool's with-word tasks (the demo's cache)."""
  bb = backbone_config(args)
  gym.register_skill_gym(list(bb.skills), bb.gym_config(), mixture_skills=bb.skills,
                         mixture_name=demo.DEMO_MIXTURE)
  lengths = gym.feature_lengths(bb.skills, bb.max_len)
  cache = pathlib.Path(args.cache_dir or demo.default_cache_root()).expanduser()
  return demo.ensure_backbone(bb, cache, lengths, log=logging.info)


# ---------------------------------------------------------------------------------------
# The stages: ordinary gin runs, cached by their result.json.


def _lengths(skills: Sequence[str], max_len: int) -> dict[str, int]:
  """No-word feature lengths that fit every skill (inputs: the bare string + EOS)."""
  inputs = max(max_len * gym.get_skill(s).alphabet.max_bytes for s in skills) + 1
  return {"inputs": inputs, "targets": gym.feature_lengths(skills, max_len)["targets"]}


class Study:
  """The stages of one study in `<out>/<stage>/` (each a run dir + result.json)."""

  def __init__(self, args: argparse.Namespace, backbone: pathlib.Path):
    self.args, self.out = args, pathlib.Path(args.out)
    self.split = split_skills()
    a = args
    self.mixtures = {
        "seen": ("seen", 0), "seen_new": ("seen_new", 1), "unseen": ("unseen", 0)}
    self.tasks = {}
    for name, (group, seed) in self.mixtures.items():
      mix = f"{PREFIX}{name}"
      self.tasks[name] = register_fewshot(self.split[group], seed, a.shots, a.test_rows,
                                          a.max_len, mix)
    lengths = _lengths(skill_pool(), a.max_len)
    self.common = [f"INITIAL_CHECKPOINT_PATH = '{backbone}'",
                   f"TASK_FEATURE_LENGTHS = {json.dumps(lengths)}",
                   f"BATCH_SIZE = {a.batch_size}", f"PROMPT_LENGTH = {a.prompt_length}",
                   "EVAL_PERIOD = 0", "train.eval_split = 'test'",
                   f"train.max_eval_examples = {a.test_rows}",
                   f"initializers.SampledVocab.population = {demo.ASCII_POPULATION}",
                   "trainer.TrainerConfig.progress_bar = False"]

  def run(self, stage: str, gin_files: Sequence[str], mixture: str, steps: int,
          extra: Sequence[str] = (), seed: int = 0) -> dict[str, Any]:
    """Trains (or resumes, or reads the cached result of) one stage."""
    from prompt_jax.studies import ipt_stage0
    run = self.out / stage
    cached = run / "result.json"
    if cached.exists():
      return json.loads(cached.read_text())
    logging.info("stage %s: %d steps on %s", stage, steps, mixture)
    t0 = time.perf_counter()
    result = ipt_stage0._train(
        ["runs/prompt_finetune.gin", *gin_files],
        [*self.common, f"MODEL_DIR = '{run}'", f"MIXTURE_OR_TASK_NAME = '{PREFIX}{mixture}'",
         f"TRAIN_STEPS = {steps}", f"CHECKPOINT_PERIOD = {max(1, steps // 2)}",
         f"train.seed = {seed}", *extra])
    scores = {t[len(PREFIX):].rsplit("_d", 1)[0]: v for t, v in
              ((k.split("/")[0], v) for k, v in result.last_eval_metrics.items()
               if k.endswith("/exact_match"))}
    out = {"stage": stage, "scores": scores, "wall_s": time.perf_counter() - t0,
           "steps": steps, "final_train": result.last_train_metrics}
    cached.write_text(json.dumps(out, indent=2) + "\n")
    logging.info("stage %s: mean exact match %.1f (%d tasks), %.0f s", stage,
                 np.mean(list(scores.values())), len(scores), out["wall_s"])
    return out

  def stage0(self) -> dict[str, Any]:
    """One PromptBank run over the seen skills; its per-task exports are the MSF bank."""
    res = self.run("stage0", ["methods/prompt_bank.gin", "prompts/sampled_vocab.gin"], "seen",
                   self.args.stage0_steps)
    from prompt_jax.studies import ipt_stage0
    run = self.out / "stage0"
    names = json.loads((run / "tasks.json").read_text())["task_names"]
    ipt_stage0.write_manifest(run, {t: run / "prompts" / t / f"prompt_{res['steps']}.npy"
                                    for t in names}, "bank")
    return res

  def pt(self, group: str, seed: int = 0, steps: int | None = None,
         stage: str | None = None) -> dict[str, Any]:
    return self.run(stage or f"pt_{group}", ["methods/prompt_bank.gin",
                                             "prompts/sampled_vocab.gin"],
                    group, steps or self.args.pt_steps, seed=seed)

  def msf(self, dim: int) -> dict[str, Any]:
    return self.run(f"msf_{dim}", ["methods/ipt_msf.gin"], "seen", self.args.msf_steps, [
        f"IPT_BANK_MANIFEST = '{self.out / 'stage0' / 'stage0.json'}'", f"IPT_DIM = {dim}",
        f"IPT_LEARNING_RATE = {self.args.msf_lr}"])

  def ist(self, dim: int, group: str) -> dict[str, Any]:
    return self.run(f"ist_{dim}_{group}", ["methods/ipt_ist.gin"], group, self.args.ist_steps, [
        f"IPT_MSF_RUN = '{self.out / f'msf_{dim}'}'", f"IPT_DIM = {dim}", "IPT_PER_TASK = True",
        f"IPT_LEARNING_RATE = {self.args.ist_lr}"])

  def ipt_pt(self, dim: int, seed: int) -> dict[str, Any]:
    return self.run(f"ipt_pt_{dim}_s{seed}", ["methods/prompt_bank.gin",
                                              "prompts/from_ist_run.gin"],
                    "unseen", self.args.stability_steps, [
                        f"IPT_IST_RUN = '{self.out / f'ist_{dim}_unseen'}'"], seed=seed)


def relative(ist: dict[str, float], pt: dict[str, float], floor: float) -> tuple[float, int]:
  """(mean over tasks of ist / pt, tasks used): tasks whose PT score is < floor are left out."""
  ratios = [ist[t] / pt[t] for t in pt if pt[t] >= floor and t in ist]
  return (float(np.mean(ratios)) if ratios else float("nan")), len(ratios)


def run_study(args: argparse.Namespace) -> dict[str, Any]:
  """Every stage in order (cached ones are read back); the results dict."""
  t0 = time.perf_counter()
  backbone = pathlib.Path(args.backbone_dir) if args.backbone_dir else ensure_backbone(args)
  wall = {"backbone": time.perf_counter() - t0}
  study = Study(args, backbone)
  res: dict[str, Any] = {"split": study.split, "args": vars(args), "backbone": str(backbone)}
  res["stage0"] = study.stage0()
  res["pt"] = {g: study.pt(g) for g in ("seen_new", "unseen")}
  res["msf"], res["ist"] = {}, {}
  for dim in args.dims:
    res["msf"][dim] = study.msf(dim)
    res["ist"][dim] = {g: study.ist(dim, g) for g in ("seen_new", "unseen")}
  dim = args.stability_dim
  res["stability"] = {
      "ipt_pt": [study.ipt_pt(dim, s) for s in args.seeds],
      "pt": [study.pt("unseen", s, args.stability_steps, f"pt_unseen_short_s{s}")
             for s in args.seeds]}
  res["wall_s"] = {**wall, **{k: v["wall_s"] for k, v in _flat_stages(res).items()}}
  return res


def _flat_stages(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
  out = {"stage0": res["stage0"], **{f"pt_{g}": v for g, v in res["pt"].items()}}
  for dim, msf in res["msf"].items():
    out[f"msf_{dim}"] = msf
    out.update({f"ist_{dim}_{g}": v for g, v in res["ist"][dim].items()})
  for kind, runs_ in res["stability"].items():
    out.update({r["stage"]: r for r in runs_})
  return out


def summarise(res: dict[str, Any], floor: float) -> dict[str, Any]:
  """Recovery per d_I (seen-new, unseen), MSF's reconstruction score, stability stats."""
  mean = lambda r: float(np.mean(list(r["scores"].values())))
  rows = []
  for dim in res["msf"]:
    row = {"d_I": int(dim), "msf_seen": mean(res["msf"][dim]),
           "msf_rec": res["msf"][dim]["final_train"].get("loss/prompt/reconstruction")}
    for g in ("seen_new", "unseen"):
      rel, n = relative(res["ist"][dim][g]["scores"], res["pt"][g]["scores"], floor)
      row.update({f"ist_{g}": mean(res["ist"][dim][g]), f"rel_{g}": rel, f"n_{g}": n})
    rows.append(row)
  stab = {}
  for kind, runs_ in res["stability"].items():
    means = [mean(r) for r in runs_]
    per_task = np.array([[r["scores"][t] for t in sorted(r["scores"])] for r in runs_])
    stab[kind] = {"mean": float(np.mean(means)), "var_over_seeds": float(np.var(means)),
                  "seed_means": means,
                  "mean_per_task_var": float(np.mean(np.var(per_task, axis=0)))}
  return {"rows": rows, "stability": stab, "stage0_seen": mean(res["stage0"]),
          "pt": {g: mean(v) for g, v in res["pt"].items()}}


def format_table(summary: dict[str, Any], res: dict[str, Any]) -> str:
  lines = ["| d_I | MSF: seen (recon.) EM % | IST seen-new EM % | rel. seen-new | "
           "IST unseen EM % | rel. unseen |", "|---|---|---|---|---|---|"]
  for r in summary["rows"]:
    lines.append(f"| {r['d_I']} | {r['msf_seen']:.1f} | {r['ist_seen_new']:.1f} | "
                 f"{100 * r['rel_seen_new']:.0f} % (n={r['n_seen_new']}) | "
                 f"{r['ist_unseen']:.1f} | {100 * r['rel_unseen']:.0f} % (n={r['n_unseen']}) |")
  lines += ["", f"Stage 0 (PT, seen, data seed 0): {summary['stage0_seen']:.1f} % EM; PT "
            f"references: seen-new {summary['pt']['seen_new']:.1f} %, unseen "
            f"{summary['pt']['unseen']:.1f} %.", "",
            "| unseen skills, same steps | mean EM % over seeds | variance over seeds | "
            "mean per-task variance | seed means |", "|---|---|---|---|---|"]
  for kind, s in summary["stability"].items():
    lines.append(f"| {kind} | {s['mean']:.1f} | {s['var_over_seeds']:.2f} | "
                 f"{s['mean_per_task_var']:.1f} | "
                 f"{', '.join(f'{m:.1f}' for m in s['seed_means'])} |")
  lines += ["", "Wall-clock (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["wall_s"].items())]
  return "\n".join(lines)


def plot(summary: dict[str, Any], path: pathlib.Path) -> None:
  """Recovery (IST / PT, mean over tasks) against d_I, seen-new and unseen."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(5.5, 3.6))
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  dims = [r["d_I"] for r in summary["rows"]]
  for key, label in (("rel_seen_new", "seen skills, new data"), ("rel_unseen", "unseen skills")):
    ax.plot(dims, [100 * r[key] for r in summary["rows"]], marker="o", label=label)
  ax.set_xscale("log")
  ax.set_xlabel("d_I (free parameters of IST)")
  ax.set_ylabel("relative performance (% of PT)")
  ax.axhline(100, color="gray", lw=0.5)
  ax.legend()
  ax.set_title("IPT on the skill gym (gym results)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m prompt_jax.studies.ipt_gym",
                              description=__doc__.split("\n")[0])
  p.add_argument("--out", default="ipt_gym_runs")
  p.add_argument("--dims", nargs="+", type=int, default=[5, 10, 50, 100, 250])
  p.add_argument("--shots", type=int, default=64, help="training rows per skill")
  p.add_argument("--test_rows", type=int, default=32)
  p.add_argument("--max_len", type=int, default=6)
  p.add_argument("--prompt_length", type=int, default=16)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--d_model", type=int, default=64)
  p.add_argument("--backbone_steps", type=int, default=1500)
  p.add_argument("--backbone_batch", type=int, default=32)
  p.add_argument("--backbone_examples", type=int, default=500, help="with-word rows per skill")
  p.add_argument("--backbone_dir", default="", help="use this HF dir instead of building one")
  p.add_argument("--stage0_steps", type=int, default=1500)
  p.add_argument("--pt_steps", type=int, default=600)
  p.add_argument("--msf_steps", type=int, default=300)
  p.add_argument("--msf_lr", type=float, default=1e-3)
  p.add_argument("--ist_steps", type=int, default=200)
  p.add_argument("--ist_lr", type=float, default=1e-2)
  p.add_argument("--stability_dim", type=int, default=250)
  p.add_argument("--stability_steps", type=int, default=200)
  p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--floor", type=float, default=10.0,
                 help="tasks whose PT exact match is below this are left out of the ratio")
  p.add_argument("--cache_dir", default=None)
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="ipt_gym %(message)s",
                      force=True)
  logging.getLogger("absl").setLevel(logging.ERROR)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  res = run_study(args)
  summary = summarise(res, args.floor)
  table = format_table(summary, res)
  (out / "results.json").write_text(json.dumps({"summary": summary, **res}, indent=2,
                                               default=str) + "\n")
  (out / "table.md").write_text(table + "\n")
  plot(summary, out / "ipt_gym.png")
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
