"""The skill-gym demo behind `make demo`: a before / after of prompt tuning on CPU in minutes.

  python -m prompt_jax.demo                  # skill `reverse`: 80 s on 2 cores (measured)
  python -m prompt_jax.demo --skill shift_1  # later runs reuse the cached backbone: < 1 minute

Expected (exact match in percent, the unit of every metric here): before=0.0 (the bare string
selects no skill), after >= 95 (measured 99-100 for reverse, shift_1, upper and copy).

Two stages, both through the library's own training loop:

1. **Backbone.** A tiny T5 1.1-style model (gated-GELU, byte vocabulary) is model-tuned from
   scratch on skill-gym tasks whose inputs read "<task word> <string>", so it learns to
   follow the word. It is saved as an HF-format checkpoint (`config.json` +
   `model.safetensors`) in a cache dir keyed by a hash of its settings, and reused.
2. **Prompt.** The backbone is loaded with `load_pretrained` and frozen; a fresh soft prompt
   is tuned on `skill_gym_<skill>_noword` (no task word): it has to select the skill.

Held-out (test split) exact match by greedy decoding is printed *before* (the backbone given
the bare string, no prompt: zero-shot) and *after* (the same input behind the tuned prompt,
best on validation), and a learning-curve PNG is written into the model dir. The last line
is `demo: <skill> exact_match before=<x.x> after=<y.y>` (percent) so scripts can read it.

Everything here is a skill-gym result, never one of the papers' benchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.checkpoints import load_pretrained, to_hf_state_dict
from prompt_jax.data import skill_gym as gym
from prompt_jax.demo_report import format_table, plot_learning_curve
from prompt_jax.models import T5Config, T5Transformer
from prompt_jax.prompts import Prompt, init_prompt_params, initializers
from prompt_jax.prompts.effective import effective_prompt
from prompt_jax.train import evaluation
from prompt_jax.train import inputs
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import trainer

# Bump when the backbone's recipe changes in a way its settings do not capture: a new
# version gets a new cache key, so a stale cached backbone is never reused.
BACKBONE_FORMAT = 1
# The backbone's mixture: a char map, a reordering, the identity and a case change, which a
# tiny T5 learns in about a minute of CPU (the full CORE_SKILLS mixture needs far longer).
DEMO_SKILLS = ("copy", "reverse", "shift_1", "upper")
DEMO_MIXTURE = "skill_gym_demo_mix"
PROMPT_INITS = ("sampled_vocab", "class_labels", "random_uniform")
# Rows that sampled-vocab init draws from: the special ids and the ASCII bytes, i.e. the
# embeddings the backbone actually trained (higher byte ids never occur in the Latin data).
ASCII_POPULATION = 3 + 128
LAST_LINE = "demo: {skill} exact_match before={before:.1f} after={after:.1f}"

Params = Any


class DemoError(ValueError):
  """A user-fixable problem with the demo's arguments or dirs."""


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Everything that determines the cached backbone (its cache key hashes these fields)."""

  skills: tuple[str, ...] = DEMO_SKILLS
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  d_kv: int = 16
  d_ff: int = 128
  train_steps: int = 1000
  batch_size: int = 32
  # Adafactor's step relative to each parameter's scale, as in T5 pre-training: training
  # from scratch with absolute steps (the fine-tuning default) is several times slower.
  learning_rate: float = 1e-2
  train_examples: int = 10_000  # Per skill.
  max_len: int = 6  # Longest input string, in letters.
  seed: int = 0

  def t5_config(self) -> T5Config:
    """T5 1.1 shape (gated-GELU, untied logits), byte vocabulary, no dropout."""
    return T5Config(vocab_size=gym.GYM_VOCAB_SIZE, d_model=self.d_model, d_kv=self.d_kv,
                    d_ff=self.d_ff, num_layers=self.num_layers,
                    num_decoder_layers=self.num_layers, num_heads=self.num_heads,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    dropout_rate=0.0)

  def gym_config(self) -> gym.GymConfig:
    return gym.GymConfig(train_examples=self.train_examples, max_len=self.max_len,
                         seed=self.seed)

  def key(self) -> str:
    """A short stable hash of the settings: the backbone's cache dir name."""
    fields = {"format": BACKBONE_FORMAT, **dataclasses.asdict(self)}
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """The prompt-tuning stage and its evaluation."""

  skill: str = "reverse"
  length: int = 16  # P.
  init: str = "sampled_vocab"
  train_steps: int = 200
  batch_size: int = 32
  learning_rate: float = 0.3
  eval_period: int = 50
  validation_examples: int = 128
  test_examples: int = 500
  eval_batch_size: int = 128
  seed: int = 0


# ---------------------------------------------------------------------------------------
# Data.


def register_data(bb: BackboneConfig, skill: str) -> dict[str, dict[str, int]]:
  """Registers the demo's tasks and mixture; returns feature lengths by use.

  Returns:
    {"mixture": with-word lengths covering the mixture and `skill` (also the evaluation
    input length), "prompt": lengths of `skill`'s no-word task}.
  """
  skills = sorted(set(bb.skills) | {skill})
  gym.register_skill_gym(skills, bb.gym_config(), mixture_skills=bb.skills,
                         mixture_name=DEMO_MIXTURE)
  with_word = gym.feature_lengths(skills, bb.max_len)
  letters = bb.max_len * gym.get_skill(skill).alphabet.max_bytes
  targets = gym.feature_lengths([skill], bb.max_len)["targets"]
  return {"mixture": with_word, "prompt": {"inputs": letters + 1, "targets": targets}}


def eval_rows(bb: BackboneConfig, skill: str, split: str, n: int, *,
              with_word: bool) -> list[dict[str, str]]:
  """The first `n` examples of a split, generated as the backbone's tasks generate them."""
  c = bb.gym_config()
  return gym.examples(skill, split, n, c.seed, with_word=with_word, min_len=c.min_len,
                      max_len=c.max_len)


# ---------------------------------------------------------------------------------------
# Evaluation: the library's evaluator on generated rows.


def as_examples(rows: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
  """Gym rows {"inputs", "targets"} -> evaluator examples (byte tokens + EOS, texts)."""
  return [{"inputs": np.asarray(gym.VOCAB.encode(r["inputs"]) + [gym.VOCAB.eos_id], np.int32),
           "inputs_pretokenized": r["inputs"].encode(),
           "targets_pretokenized": r["targets"].encode()} for r in rows]


def make_evaluator(model: Any, frozen: Params, task: str, rows: Sequence[Mapping[str, str]],
                   lengths: Mapping[str, int], batch_size: int) -> evaluation.Evaluator:
  """Greedy exact match of `task`'s metric on fixed rows (one compiled shape)."""
  return evaluation.Evaluator(model, frozen, [task], split="", feature_lengths=lengths,
                              batch_size=batch_size, examples={task: as_examples(rows)})


def exact_match(ev: evaluation.Evaluator, trainable: Params) -> tuple[float, list[str]]:
  """(Exact match in percent of the evaluator's task, the stripped predictions)."""
  (task,) = ev.examples
  result = ev.evaluate_task(trainable, task)
  return result.metrics["exact_match"], [gym.strip_postprocessor(p) for p in result.predictions]


# ---------------------------------------------------------------------------------------
# Stage 1: the backbone.


def _log_period(steps: int) -> int:
  """Every 10 steps, or often enough that a short run still logs a curve."""
  return max(1, min(10, steps // 4))


def init_backbone_params(config: T5Config, seed: int) -> Params:
  """The backbone's random initial weights (T5 initializers)."""
  tokens = jnp.ones((1, 1), jnp.int32)
  variables = T5Transformer(config).init(jax.random.PRNGKey(seed), tokens, tokens)
  return nn.unbox(variables)["params"]


def train_backbone(bb: BackboneConfig, run_dir: pathlib.Path, lengths: Mapping[str, int], *,
                   progress_bar: bool = False) -> Params:
  """Model-tunes a fresh tiny T5 on the demo mixture (resumes from `run_dir`)."""
  config = bb.t5_config()
  opt = dataclasses.replace(opt_lib.MODEL_TUNING_OPTIMIZER, learning_rate=bb.learning_rate,
                            multiply_by_parameter_scale=True)
  result = trainer.train(
      T5Transformer(config), {}, init_backbone_params(config, bb.seed),
      rules=opt_lib.MODEL_TUNING_RULES, opt_config=opt,
      batches=inputs.batch_factory(DEMO_MIXTURE, split="train", task_feature_lengths=lengths,
                                   batch_size=bb.batch_size, seed=bb.seed),
      cfg=trainer.TrainerConfig(model_dir=str(run_dir), train_steps=bb.train_steps,
                                checkpoint_period=bb.train_steps, seed=bb.seed,
                                log_period=_log_period(bb.train_steps), enable_dropout=False,
                                progress_bar=progress_bar))
  return result.trainable


def save_hf_checkpoint(params: Params, config: T5Config, out_dir: pathlib.Path) -> None:
  """Writes an HF-format checkpoint: `config.json` and `model.safetensors`."""
  from safetensors.numpy import save_file  # Local: only the backbone build writes one.
  out_dir.mkdir(parents=True, exist_ok=True)
  state = {k: np.asarray(v, np.float32) for k, v in to_hf_state_dict(params, config).items()}
  save_file(state, str(out_dir / "model.safetensors"))
  (out_dir / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")


def is_backbone(path: pathlib.Path) -> bool:
  return all((path / name).is_file() for name in ("config.json", "model.safetensors"))


def ensure_backbone(bb: BackboneConfig, cache_root: pathlib.Path, lengths: Mapping[str, int],
                    *, progress_bar: bool = False, log: Callable[[str], None] = print
                    ) -> pathlib.Path:
  """The cached backbone's dir, built first if missing.

  The build runs in `<cache_root>/<key>.partial/` (an interrupted build resumes from its
  training checkpoint there), then the dir is renamed to `<cache_root>/<key>/` in one step,
  so a reader never sees a half-written backbone. The training checkpoints are dropped;
  `run/metrics.jsonl` (its learning curve) is kept.
  """
  final = cache_root / bb.key()
  if is_backbone(final):
    log(f"backbone: cached at {final}")
    return final
  partial = cache_root / f"{bb.key()}.partial"
  done = partial / "backbone.json"  # Written last: the weights in `partial` are complete.
  if not done.exists():
    log(f"backbone: model-tuning a tiny T5 on {', '.join(bb.skills)} "
        f"({bb.train_steps} steps, batch {bb.batch_size}) -> {final}")
    params = train_backbone(bb, partial / "run", lengths, progress_bar=progress_bar)
    save_hf_checkpoint(params, bb.t5_config(), partial)
    done.write_text(json.dumps({"format": BACKBONE_FORMAT, **dataclasses.asdict(bb)},
                               indent=2) + "\n")
  shutil.rmtree(partial / "run" / "checkpoints", ignore_errors=True)
  try:
    os.rename(partial, final)
  except OSError:
    if not is_backbone(final):  # Not a concurrent build that finished first.
      raise
    shutil.rmtree(partial, ignore_errors=True)
  return final


# ---------------------------------------------------------------------------------------
# Stage 2: the prompt.


def make_prompt(pc: PromptConfig, embedding: np.ndarray) -> Prompt:
  """A fresh prompt whose init draws on the frozen backbone's embedding table [V, D]."""
  specs = {
      "sampled_vocab": initializers.SampledVocab(ASCII_POPULATION),
      # The task word plays the class label: row 0 is the mean of its byte embeddings.
      "class_labels": initializers.ClassLabels((gym.get_skill(pc.skill).word,),
                                               ASCII_POPULATION),
      "random_uniform": initializers.RandomUniform(),
  }
  if pc.init not in specs:
    raise ValueError(f"Unknown prompt init {pc.init!r}; use one of {PROMPT_INITS}.")
  return initializers.bind_initializers(Prompt(pc.length, initializer=specs[pc.init]),
                                        initializers.Pretrained(embedding, gym.VOCAB))


@dataclasses.dataclass
class PromptRun:
  """What the prompt stage leaves: the prompted model, its frozen params and the prompt."""
  model: T5Transformer
  frozen: Params
  prompt: np.ndarray  # [P, D], best on validation when periodic eval ran.
  result: trainer.TrainResult


def tune_prompt(pc: PromptConfig, bb: BackboneConfig, model: T5Transformer, frozen: Params,
                model_dir: pathlib.Path, lengths: Mapping[str, Mapping[str, int]], *,
                progress_bar: bool = False) -> PromptRun:
  """Tunes a prompt on `skill_gym_<skill>_noword` with the backbone frozen.

  Every `pc.eval_period` steps the prompt is scored (greedy exact match) on validation
  examples; the best one is exported as `prompts/prompt_best.npy` and returned.
  """
  prompt = make_prompt(pc, np.asarray(frozen["token_embedder"]["embedding"]))
  prompted = T5Transformer(model.config, prompt=prompt)
  init = {"prompt": init_prompt_params(prompt, jax.random.PRNGKey(pc.seed),
                                       model.config.d_model)}
  # Evaluated as the exported prompt will be: a plain Prompt of the same shape (the bound
  # initializer is not needed to apply), so this and the final eval share one compile.
  validation = make_evaluator(
      T5Transformer(model.config, prompt=Prompt(pc.length)), frozen, gym.task_name(pc.skill, with_word=False),
      eval_rows(bb, pc.skill, "validation", pc.validation_examples, with_word=False),
      eval_lengths(lengths), pc.eval_batch_size)

  def evaluator(trainable: Params, step: int) -> dict[str, float]:
    del step
    return {"exact_match": exact_match(validation, trainable)[0]}

  result = trainer.train(
      prompted, frozen, init, groups=opt_lib.ParamGroups(
          opt_lib.PROMPT_TUNING_RULES,
          {opt_lib.TRAINABLE: opt_lib.OptimizerConfig(learning_rate=pc.learning_rate)}),
      batches=inputs.batch_factory(gym.task_name(pc.skill, with_word=False), split="train",
                                   task_feature_lengths=lengths["prompt"],
                                   batch_size=pc.batch_size, seed=pc.seed),
      cfg=trainer.TrainerConfig(model_dir=str(model_dir), train_steps=pc.train_steps,
                                checkpoint_period=pc.train_steps, eval_period=pc.eval_period,
                                log_period=_log_period(pc.train_steps), seed=pc.seed,
                                enable_dropout=False, best_metric="exact_match",
                                progress_bar=progress_bar),
      evaluator=evaluator)
  best = model_dir / "prompts" / "prompt_best.npy"
  prompt_array = (initializers.load_npy_prompt(best) if best.exists()
                  else effective_prompt(prompted, result.trainable))
  return PromptRun(prompted, frozen, prompt_array, result)


def eval_lengths(lengths: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
  """Inputs as long as the mixture's (with-word rows fit), targets as the prompt task's."""
  return {"inputs": lengths["mixture"]["inputs"], "targets": lengths["prompt"]["targets"]}


# ---------------------------------------------------------------------------------------
# The whole demo.

# What a prompt run writes into its model dir (removed by `overwrite`; nothing else is).
_RUN_OUTPUTS = ("checkpoints", "prompts", "events", "metrics.jsonl", "best.json",
                "learning_curve.png", "demo.json")
# Settings a resumed prompt run must share with the run it resumes (steps may grow).
_RESUME_KEYS = ("skill", "length", "init", "batch_size", "learning_rate", "seed")


@dataclasses.dataclass
class DemoResult:
  skill: str
  before: float
  after: float
  reference: float
  backbone_dir: pathlib.Path
  model_dir: pathlib.Path
  plot: pathlib.Path
  seconds: dict[str, float]
  run: PromptRun


def prepare_run_dir(model_dir: pathlib.Path, bb: BackboneConfig, pc: PromptConfig,
                     overwrite: bool) -> None:
  """Clears the run (`overwrite`), or checks that the run to resume has the same settings."""
  record = model_dir / "demo.json"
  settings = {"backbone": bb.key(), **{k: getattr(pc, k) for k in _RESUME_KEYS}}
  if overwrite:
    for path in (model_dir / name for name in _RUN_OUTPUTS):
      if path.is_dir():
        shutil.rmtree(path)
      else:
        path.unlink(missing_ok=True)
  elif (model_dir / "checkpoints").exists() and record.exists():
    old = json.loads(record.read_text())
    if old != settings:
      changed = sorted(k for k in settings if old.get(k) != settings[k])
      raise DemoError(f"{model_dir} holds a prompt run with other settings ({', '.join(changed)}"
                      f"); pass --overwrite to start it afresh, or another --model_dir.")
  model_dir.mkdir(parents=True, exist_ok=True)
  record.write_text(json.dumps(settings, indent=2) + "\n")


def run_demo(bb: BackboneConfig, pc: PromptConfig, *, cache_root: pathlib.Path,
             model_dir: pathlib.Path, overwrite: bool = False, progress_bar: bool = False,
             log: Callable[[str], None] = print) -> DemoResult:
  """Backbone (cached), zero-shot eval, prompt tuning, prompted eval, plot. See module doc."""
  if pc.skill not in bb.skills:
    log(f"note: the backbone never learned {pc.skill!r} (its skills: {', '.join(bb.skills)}); "
        "the prompt has to teach it, which a small prompt rarely manages.")
  prepare_run_dir(model_dir, bb, pc, overwrite)
  seconds = {}
  t0 = time.perf_counter()
  lengths = register_data(bb, pc.skill)
  backbone_dir = ensure_backbone(bb, cache_root, lengths["mixture"], progress_bar=progress_bar,
                                 log=log)
  seconds["backbone"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  model, frozen = load_pretrained(backbone_dir)
  test = {w: eval_rows(bb, pc.skill, "test", pc.test_examples, with_word=w) for w in (True, False)}
  reference, _ = exact_match(make_evaluator(model, frozen, gym.task_name(pc.skill, True),
                                            test[True], eval_lengths(lengths),
                                            pc.eval_batch_size), {})
  before, before_predictions = exact_match(
      make_evaluator(model, frozen, gym.task_name(pc.skill, False), test[False],
                     eval_lengths(lengths), pc.eval_batch_size), {})
  seconds["eval"] = time.perf_counter() - t0
  log(f"backbone on {pc.skill!r}: with task word {reference:.1f}, without (zero-shot) "
      f"{before:.1f} (exact match, %)")

  t0 = time.perf_counter()
  log(f"prompt: tuning P={pc.length} ({pc.init} init) on {gym.task_name(pc.skill, False)} "
      f"for {pc.train_steps} steps -> {model_dir}")
  run = tune_prompt(pc, bb, model, frozen, model_dir, lengths, progress_bar=progress_bar)
  seconds["prompt"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  # The exported prompt, evaluated as a user would: a plain Prompt holding its rows.
  after, after_predictions = exact_match(
      make_evaluator(T5Transformer(model.config, prompt=Prompt(pc.length)), frozen,
                     gym.task_name(pc.skill, False), test[False], eval_lengths(lengths),
                     pc.eval_batch_size), {"prompt": {"prompt": np.asarray(run.prompt)}})
  seconds["eval"] += time.perf_counter() - t0
  plot = model_dir / "learning_curve.png"
  plot_learning_curve(model_dir, plot, backbone_run=backbone_dir / "run",
                      title=f"prompt tuning: {pc.skill} (no task word)")
  for row, b, a in list(zip(test[False], before_predictions, after_predictions))[:3]:
    log(f"  {row['inputs']!r:>12} -> before {b!r}, after {a!r} (target {row['targets']!r})")
  log(format_table(pc.skill, len(test[False]), reference, before, after, pc.length))
  log(f"learning curve: {plot}")
  return DemoResult(pc.skill, before, after, reference, backbone_dir, model_dir, plot, seconds,
                    run)


# ---------------------------------------------------------------------------------------
# Command line.


def default_cache_root() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "prompt_jax" / "skill_gym"


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  bb, pc = BackboneConfig(), PromptConfig()
  p = argparse.ArgumentParser(
      prog="prompt-jax demo", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--skill", default=pc.skill, help="skill the prompt selects (see skill_gym)")
  p.add_argument("--model_dir", default=None, help="prompt run dir (None: ./demo_runs/<skill>)")
  p.add_argument("--cache_dir", default=None,
                 help=f"backbone cache root (None: {default_cache_root()})")
  p.add_argument("--overwrite", action="store_true",
                 help="start the prompt run afresh instead of resuming it")
  p.add_argument("--backbone_skills", default=",".join(bb.skills),
                 help="comma-separated skills of the backbone's mixture")
  p.add_argument("--backbone_steps", type=_positive_int, default=bb.train_steps)
  p.add_argument("--prompt_steps", type=_positive_int, default=pc.train_steps)
  p.add_argument("--prompt_length", type=_positive_int, default=pc.length)
  p.add_argument("--prompt_init", choices=PROMPT_INITS, default=pc.init)
  p.add_argument("--learning_rate", type=float, default=pc.learning_rate,
                 help="prompt-tuning learning rate (Adafactor, constant)")
  p.add_argument("--eval_period", type=_positive_int, default=pc.eval_period)
  p.add_argument("--test_examples", type=_positive_int, default=pc.test_examples)
  p.add_argument("--seed", type=int, default=pc.seed, help="prompt init and data order")
  p.add_argument("--progress_bar", action=argparse.BooleanOptionalAction,
                 default=sys.stderr.isatty())
  return p.parse_args(argv)


def configs_from_args(args: argparse.Namespace) -> tuple[BackboneConfig, PromptConfig]:
  skills = tuple(s.strip() for s in args.backbone_skills.split(",") if s.strip())
  for skill in (*skills, args.skill):
    try:
      gym.get_skill(skill)
    except KeyError as e:  # Its message lists the families.
      raise DemoError(e.args[0]) from None
  bb = BackboneConfig(skills=skills, train_steps=args.backbone_steps)
  pc = PromptConfig(skill=args.skill, length=args.prompt_length, init=args.prompt_init,
                    train_steps=args.prompt_steps, learning_rate=args.learning_rate,
                    eval_period=args.eval_period, test_examples=args.test_examples,
                    seed=args.seed)
  return bb, pc


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the demo; the last line printed is `demo: <skill> exact_match before=.. after=..`."""
  args = parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)  # No per-task seqio cache warnings.
  start = time.perf_counter()
  try:
    bb, pc = configs_from_args(args)
    result = run_demo(
        bb, pc, cache_root=pathlib.Path(args.cache_dir or default_cache_root()).expanduser(),
        model_dir=pathlib.Path(args.model_dir or pathlib.Path("demo_runs") / pc.skill),
        overwrite=args.overwrite, progress_bar=args.progress_bar)
  except DemoError as e:
    print(f"demo: {e.args[0]}", file=sys.stderr)
    return 2
  s = result.seconds
  print(f"time: {time.perf_counter() - start:.0f} s (backbone {s['backbone']:.0f} s, prompt "
        f"{s['prompt']:.0f} s, eval {s['eval']:.0f} s)")
  print(LAST_LINE.format(skill=pc.skill, before=result.before, after=result.after), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
