"""`prompt-jax bench`: the speed of one training step, prompt tuning vs model tuning.

Times the library's own jitted train step (`prompt_jax.train.step.make_train_step`, wired as
the trainer wires it) on a T5 1.1-shaped model with random float32 weights and a synthetic
full-length batch, and prints ONE JSON object on stdout (logs go to stderr):

  {"matmul_peak_flops": ...,
   "prompt_tuning": {"steps_per_s", "examples_per_s", "flops_per_step",
                     "flops_fraction_of_peak", "peak_rss_mb"},
   "model_tuning": {...same keys...},
   # with --peer peft:
   "peft_prompt_tuning": {"steps_per_s", "examples_per_s", "peak_rss_mb"},
   "speedup_vs_peft": <prompt_tuning steps/s / peft steps/s>,
   "dropout_0": {...},  # --peer peft, dropout > 0: prompt_tuning (with its fraction of the
                        # peak) and PEFT at dropout 0
   "peak": {...}}       # the robust matmul peak (`prompt_jax.bench_cases`)
  plus, on request, "eval" (--eval), "bucketing" (--bucketing), "remat" (--remat): see
  `prompt_jax.bench_cases`; `--skip_train` leaves out the training-step modes.

What is compared:
  * prompt_tuning: a Lester prompt [P, D] prepended to the encoder input; only the prompt
    trains (`PROMPT_TUNING_RULES`, the paper's Adafactor).
  * model_tuning: the same prompted model with every parameter trainable
    (`MODEL_TUNING_RULES`, factored Adafactor). The shapes are identical (the encoder sees
    P+L positions in both), so the ratio of the two step costs isolates what freezing saves:
    no weight gradients, ideally 2/3 of the model-tuning FLOPs.
  * peft_prompt_tuning (`--peer peft`): HF `T5ForConditionalGeneration` from a random config
    of the same shape wrapped by `peft`'s `PromptTuningConfig(SEQ_2_SEQ_LM, P virtual
    tokens)`, AdamW on the prompt, torch threads = the CPU cores it may use.
  Dropout is on at rate 0.1 in all three (HF T5's default, in train mode); `--dropout_rate`
  changes it for all three.

How it measures:
  * Each mode runs in its own subprocess (so its peak RSS is its own); the subprocesses
    build and compile side by side, then the parent makes them take their steps in turn,
    one step each per round, with the float32 matmul of the peak measurement in the same
    rounds. Load from other programs on a shared machine then hits every mode alike.
  * steps/s: 1 / median wall time of `--steps` timed rounds after `--warmup` untimed ones.
  * flops_per_step: XLA's cost analysis of the compiled step (`lower(...).compile()`).
  * matmul_peak_flops: the best of repeats of float32 matmuls of the step's shapes and an
    n x n one, in the same rounds (`bench_cases.PeakRunner`);
    flops_fraction_of_peak = flops_per_step * steps/s / matmul_peak_flops.
  * peak_rss_mb: peak resident set of the process that ran the mode (`ru_maxrss`).
    `--in_process` runs everything in one process instead (faster to start, used by the
    tests); then each figure is the process-wide peak, cumulative over the modes.

With `--method NAME` (dept, dept_fusion, dept_multispace, ept: the `gin/methods/` files of
`prompt_jax.prompts.ept`) the bench times that comparison instead of the modes above:

  {"matmul_peak_flops": ..., "method": NAME,
   "setting": {"budget_length", "short_length", "rank", "max_length", "trainable_params",
               "budget_trainable_params"},
   "budget_prompt_train" / "method_train" / "budget_prompt_eval" / "method_eval":
       {"steps_per_s", "examples_per_s", "flops_per_step", "peak_rss_mb"},
   "train_time_ratio": method step time / plain-prompt step time (< 1: the method is faster),
   "eval_time_ratio": the same for the eval step}

  * budget_prompt_*: a plain prompt of `--budget_length` rows (default 100).
  * method_*: the method's EPTPrompt with `--short_length` rows (default 60), L_max = the
    input length and R budget-matched (`ept.budget_rank`), its three parameter groups.
  * *_train: the train step; *_eval: the teacher-forced eval step (`TrainSetup.eval_fn`, the
    loss and token accuracy without dropout), not decoding.

Run: `prompt-jax bench --peer peft` (a few minutes on 2 CPU cores, mostly compiling);
`prompt-jax bench --method dept` for the DePT / EPT-style speed comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from prompt_jax.bench_process import ChildRunner, serve

MODES = ("prompt_tuning", "model_tuning")
PEER_MODE = "peft_prompt_tuning"
METHOD_MODES = ("budget_prompt_train", "method_train", "budget_prompt_eval", "method_eval")
# `--method`: the EPTPrompt switches of each gin/methods/ file.
METHODS = {"dept": {}, "dept_fusion": {"fusion": True},
           "dept_multispace": {"num_subspaces": 4},
           "ept": {"fusion": True, "num_subspaces": 4}}
MATMUL = "matmul"
# The `prompt_jax.bench_cases` runners (evaluation, bucketing, peak), by name.
ALL_CASES = ("peak", "torch_peak", "eval_rank", "eval_greedy", "hf_eval_rank", "hf_eval_greedy",
             "bucketing", "fixed_padding", "peft_bucketing")
IN_PARENT = (MATMUL, "peak")  # Runners the parent process hosts itself.
# Boolean BenchConfig fields (store_true flags).
SWITCHES = ("tiny", "eval", "bucketing", "skip_train", "remat", "remat_on")
# `--tiny` (the tests): a model that compiles in seconds, with unequal sizes.
TINY_MODEL = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=24, num_layers=1,
                  num_decoder_layers=1, num_heads=3, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
TINY_SHAPES = dict(batch_size=2, input_length=12, target_length=4, prompt_length=3,
                   matmul_size=128)
# Tiny timings mean nothing, so its steps skip LLVM's optimisations: compiles take a third.
TINY_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """What one benchmark run measures. Defaults: the issue's T5 1.1 Small setting."""
  size: str = "small"
  batch_size: int = 8
  input_length: int = 128
  target_length: int = 8
  prompt_length: int = 20
  steps: int = 10
  warmup: int = 2
  dropout_rate: float = 0.1
  matmul_size: int = 2048
  tiny: bool = False
  seed: int = 0
  method: str = ""  # "" or a METHODS key: the method comparison replaces the modes.
  budget_length: int = 100
  short_length: int = 60
  eval: bool = False  # Add the evaluation section (`prompt_jax.bench_cases`).
  bucketing: bool = False  # Add the length-bucketing section.
  length_dist: str = "sst2"
  max_length: int = 512
  bucket_batches: int = 4
  peak_repeats: int = 3
  skip_train: bool = False  # Time only the peak and the --eval / --bucketing cases.
  remat: bool = False  # Add prompt_tuning with per-layer rematerialisation (the remat section).
  remat_on: bool = False  # Internal: this runner's model uses remat.


class Runner(Protocol):
  """Something the benchmark times one step at a time."""

  def step(self) -> float:
    """Runs one step to completion; returns its wall time in seconds."""

  def summary(self) -> dict[str, float]:
    """Figures that do not depend on timing (FLOPs, peak RSS)."""


def model_config(cfg: BenchConfig):
  """The T5 1.1 config of the benchmark (or the tiny test config)."""
  from prompt_jax.models import T5Config, t5_1_1_config
  if cfg.tiny:
    return T5Config(**TINY_MODEL, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    dropout_rate=cfg.dropout_rate, remat=cfg.remat_on)
  return t5_1_1_config(cfg.size, dropout_rate=cfg.dropout_rate, remat=cfg.remat_on)


def synthetic_batch(cfg: BenchConfig, vocab_size: int) -> dict[str, np.ndarray]:
  """A full-length batch (no padding): random tokens, each row ending in EOS (id 1).

  Returns encoder_input_tokens [B, L], decoder_input_tokens / decoder_target_tokens [B, T]
  (inputs = targets shifted right behind start id 0) and decoder_loss_weights [B, T] of ones.
  """
  rng = np.random.default_rng(cfg.seed)
  b, l, t = cfg.batch_size, cfg.input_length, cfg.target_length
  enc = rng.integers(2, vocab_size, (b, l), dtype=np.int32)
  tgt = rng.integers(2, vocab_size, (b, t), dtype=np.int32)
  enc[:, -1], tgt[:, -1] = 1, 1
  dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt, "decoder_loss_weights": np.ones((b, t), np.float32)}


def random_params(shapes: Any, seed: int) -> Any:
  """Random float32 weights for a tree of shapes, drawn with NumPy (no XLA compiles).

  Vectors (layer-norm scales) are ones; matrices are normal with std fan_in ** -0.5, so
  activations stay O(1): no overflow, no denormals to slow the CPU down.
  """
  import jax
  rng = np.random.default_rng(seed)

  def draw(s):
    if len(s.shape) == 1:
      return np.ones(s.shape, np.float32)
    return rng.standard_normal(s.shape, np.float32) * np.float32(s.shape[0] ** -0.5)

  return jax.tree_util.tree_map(draw, shapes)


def peak_rss_mb() -> float:
  """Peak resident set size of this process so far, in MiB."""
  try:
    import resource  # Unix only.
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2.0**20 if sys.platform == "darwin" else kib / 1024.0  # macOS: bytes.
  except ImportError:
    import psutil  # No peak figure elsewhere: the current RSS is a lower bound.
    return psutil.Process().memory_info().rss / 2.0**20


def available_cores() -> int:
  """CPU cores this process may run on (respects `taskset` / cpusets)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def cost_flops(compiled: Any) -> float:
  """FLOPs of a compiled XLA computation (`cost_analysis()` is a dict, or a list of one)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = float((analysis or {}).get("flops", 0.0))
  if flops <= 0:
    raise RuntimeError(f"XLA cost analysis reported no flops: {analysis!r}.")
  return flops


class MatmulRunner:
  """A jitted [n, n] x [n, n] float32 matmul: the machine's practical FLOP/s peak."""

  def __init__(self, n: int):
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    self.a = jax.device_put(rng.standard_normal((n, n), np.float32))
    self.b = jax.device_put(rng.standard_normal((n, n), np.float32))
    self.matmul = jax.jit(jnp.matmul).lower(self.a, self.b).compile()
    self.flops = 2.0 * n**3

  def step(self) -> float:
    start = time.perf_counter()
    self.matmul(self.a, self.b).block_until_ready()
    return time.perf_counter() - start

  def summary(self) -> dict[str, float]:
    return {"flops_per_step": self.flops}


class JaxStepRunner:
  """The library's compiled train step for `mode`, on placed state, frozen params and batch."""

  def __init__(self, mode: str, cfg: BenchConfig):
    if mode not in MODES + METHOD_MODES:
      raise ValueError(f"Unknown mode {mode!r}; one of {MODES + METHOD_MODES}.")
    start = time.perf_counter()
    self.eval = mode.endswith("_eval")
    self.compiled, self.state, self.frozen, self.batch, self.counts = build_train_step(mode,
                                                                                       cfg)
    self.flops = cost_flops(self.compiled)
    logging.info("%s: built and compiled in %.1f s; %.2f GFLOP per step", mode,
                 time.perf_counter() - start, self.flops / 1e9)

  def step(self) -> float:
    import jax
    start = time.perf_counter()
    if self.eval:  # `state` is the trainable subtree here (nothing is donated).
      jax.block_until_ready(self.compiled(self.state, self.frozen, self.batch))
      return time.perf_counter() - start
    self.state, sums = self.compiled(self.state, self.frozen, self.batch)  # Donates state.
    jax.block_until_ready((self.state, sums))
    return time.perf_counter() - start

  def summary(self) -> dict[str, float]:
    memory = self.compiled.memory_analysis()  # XLA's buffer assignment of the compiled step.
    temp = float(getattr(memory, "temp_size_in_bytes", 0.0)) if memory is not None else 0.0
    return {"flops_per_step": self.flops, "peak_rss_mb": peak_rss_mb(),
            "temp_mb": temp / 2.0**20, **self.counts}


def method_prompt(mode: str, cfg: BenchConfig, d_model: int):
  """(prompt module, parameter groups) of a `--method` mode."""
  from prompt_jax.prompts import Prompt, ept
  from prompt_jax.train import optimizer as opt_lib
  if mode.startswith("budget_prompt"):
    return Prompt(cfg.budget_length), opt_lib.PROMPT_TUNING
  if cfg.method not in METHODS:
    raise ValueError(f"Unknown --method {cfg.method!r}; one of {sorted(METHODS)}.")
  module = ept.EPTPrompt(length=cfg.short_length, max_length=cfg.input_length,
                         budget_length=cfg.budget_length, **METHODS[cfg.method])
  module.resolved_rank(d_model)  # Fails here, readably, when the budget leaves no rank.
  return module, ept.param_groups()


def build_train_step(mode: str, cfg: BenchConfig):
  """Wires `mode` as the trainer does. Returns (compiled step, state, frozen, batch)."""
  import flax.linen as nn
  import jax
  from prompt_jax.models import T5Transformer
  from prompt_jax.prompts import Prompt
  from prompt_jax.train import builder
  from prompt_jax.train import optimizer as opt_lib

  config = model_config(cfg)
  if mode in METHOD_MODES:
    prompt, groups = method_prompt(mode, cfg, config.d_model)
  else:
    prompt = Prompt(cfg.prompt_length)
    groups = opt_lib.PROMPT_TUNING if mode == "prompt_tuning" else opt_lib.MODEL_TUNING
  model = T5Transformer(config, prompt=prompt)
  setup = builder.build(model, groups, builder.make_mesh(1, jax.devices()[:1]),
                        enable_dropout=cfg.dropout_rate > 0)
  params = random_params(nn.unbox(builder.abstract_params(model)), cfg.seed)
  trainable, frozen = opt_lib.split_params(params, groups.labels(params))
  n_train, _ = opt_lib.log_param_counts(trainable, frozen)
  counts = {"trainable_params": float(n_train)}
  if hasattr(prompt, "resolved_rank"):
    counts["rank"] = float(prompt.resolved_rank(config.d_model))
  frozen = setup.put_frozen(frozen)
  batch = setup.put_batch(synthetic_batch(cfg, config.vocab_size))
  options = TINY_COMPILER_OPTIONS if cfg.tiny else None
  if mode.endswith("_eval"):
    state = jax.device_put(trainable, setup.trainable_sharding)
    fn = setup.eval_fn
  else:
    state = setup.init_state(trainable, cfg.seed)
    fn = setup.step_fn
  return fn.lower(state, frozen, batch).compile(options), state, frozen, batch, counts


DROPOUT_0 = "_dropout_0"  # Suffix: the same mode or peer with dropout off.
REMAT = "_remat"  # Suffix: the same mode with per-layer rematerialisation.


def make_runner(name: str, cfg: BenchConfig) -> Runner:
  """An in-process runner for a mode, the peer, the matmul or a `bench_cases` case."""
  from prompt_jax import bench_cases
  if name.endswith(DROPOUT_0):
    return make_runner(name.removesuffix(DROPOUT_0), dataclasses.replace(cfg, dropout_rate=0.0))
  if name.endswith(REMAT):
    return make_runner(name.removesuffix(REMAT), dataclasses.replace(cfg, remat_on=True))
  if name in ALL_CASES:
    return bench_cases.make_runner(name, cfg)
  if name == PEER_MODE:
    return bench_cases.PeftRunner(cfg)
  if name == MATMUL:
    return MatmulRunner(cfg.matmul_size)
  return JaxStepRunner(name, cfg)


def time_in_rounds(runners: Mapping[str, Runner], steps: int, warmup: int,
                   pause_s: float = 0.05) -> dict[str, float]:
  """Median step seconds of each runner; they take turns, one step each per round.

  The short pause lets the previous runner's worker threads go idle before the next starts.
  """
  times: dict[str, list[float]] = {name: [] for name in runners}
  for r in range(warmup + steps):
    took = {}
    for name, runner in runners.items():
      time.sleep(pause_s)
      took[name] = runner.step()
      if r >= warmup:
        times[name].append(took[name])
    logging.info("round %d%s: %s", r, " (warm-up)" if r < warmup else "",
                 " ".join(f"{n}={t:.3f}s" for n, t in took.items()))
  return {name: statistics.median(t) for name, t in times.items()}


def run_bench(cfg: BenchConfig, peers: Sequence[str] = (), *,
              isolate: bool = True) -> dict[str, Any]:
  """Builds every mode (and the peers), times them in rounds; returns the JSON object."""
  for peer in peers:
    if peer != "peft":
      raise ValueError(f"Unknown peer {peer!r}; supported: 'peft'.")
  from prompt_jax import bench_cases
  modes = METHOD_MODES if cfg.method else MODES
  names = [*modes] + ([PEER_MODE] if "peft" in peers else [])
  if "peft" in peers and not cfg.method and cfg.dropout_rate > 0:
    names += ["prompt_tuning" + DROPOUT_0, PEER_MODE + DROPOUT_0]
  if cfg.skip_train:
    names = []
  if cfg.remat:
    names = list(dict.fromkeys(names + ["prompt_tuning", "prompt_tuning" + REMAT]))
  names += bench_cases.case_names(cfg, peers)
  runners: dict[str, Any] = {}
  try:
    for name in names:  # Children build side by side.
      runners[name] = (ChildRunner(name, cfg) if isolate and name not in IN_PARENT
                       else make_runner(name, cfg))
    for runner in runners.values():
      if isinstance(runner, ChildRunner):
        runner.wait_ready()
    seconds = time_in_rounds(runners, cfg.steps, cfg.warmup)
    summaries = {name: runner.summary() for name, runner in runners.items()}
  finally:
    for runner in runners.values():
      if isinstance(runner, ChildRunner):
        runner.close()
  return assemble(cfg, seconds, summaries)


def assemble(cfg: BenchConfig, seconds: Mapping[str, float],
             summaries: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
  """The benchmark's JSON object from median step times and runner summaries."""
  from prompt_jax import bench_cases
  cases = bench_cases.assemble_cases(cfg, seconds, summaries)
  peak = cases["peak"]["jax_matmul_flops"]  # Best of repeats over the step's shapes.
  if cfg.remat:
    cases["remat"] = bench_cases.remat_section(seconds, summaries)
  if cfg.skip_train:
    return {"matmul_peak_flops": peak, **cases}
  if cfg.method:
    return {**assemble_method(cfg, peak, seconds, summaries), **cases}
  result: dict[str, Any] = {"matmul_peak_flops": peak}
  for mode in MODES:
    flops, steps_per_s = summaries[mode]["flops_per_step"], 1.0 / seconds[mode]
    result[mode] = {"steps_per_s": steps_per_s, "examples_per_s": cfg.batch_size * steps_per_s,
                    "flops_per_step": flops, "flops_fraction_of_peak": flops * steps_per_s / peak,
                    "peak_rss_mb": summaries[mode]["peak_rss_mb"]}
  pt, mt = result["prompt_tuning"], result["model_tuning"]
  logging.info("prompt-tuning step / model-tuning step: time %.3f, FLOPs %.3f",
               mt["steps_per_s"] / pt["steps_per_s"], pt["flops_per_step"] / mt["flops_per_step"])
  if PEER_MODE in seconds:
    steps_per_s = 1.0 / seconds[PEER_MODE]
    result[PEER_MODE] = {"steps_per_s": steps_per_s,
                         "examples_per_s": cfg.batch_size * steps_per_s,
                         "peak_rss_mb": summaries[PEER_MODE]["peak_rss_mb"]}
    result["speedup_vs_peft"] = pt["steps_per_s"] / steps_per_s
  if PEER_MODE + DROPOUT_0 in seconds:
    ours, peer = (1.0 / seconds["prompt_tuning" + DROPOUT_0],
                  1.0 / seconds[PEER_MODE + DROPOUT_0])
    mine: dict[str, float] = {"steps_per_s": ours, "examples_per_s": cfg.batch_size * ours}
    flops = summaries.get("prompt_tuning" + DROPOUT_0, {}).get("flops_per_step")
    if flops:  # The step without dropout's selects: its own FLOPs and fraction of the peak.
      mine.update(flops_per_step=flops, flops_fraction_of_peak=flops * ours / peak)
    result["dropout_0"] = {
        "prompt_tuning": mine,
        PEER_MODE: {"steps_per_s": peer, "examples_per_s": cfg.batch_size * peer},
        "speedup_vs_peft": ours / peer}
  return {**result, **cases}


def assemble_method(cfg: BenchConfig, peak: float, seconds: Mapping[str, float],
                    summaries: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
  """The `--method` JSON object (see the module docstring)."""
  method = summaries["method_train"]
  result: dict[str, Any] = {"matmul_peak_flops": peak, "method": cfg.method, "setting": {
      "budget_length": cfg.budget_length, "short_length": cfg.short_length,
      "rank": int(method["rank"]), "max_length": cfg.input_length,
      "trainable_params": int(method["trainable_params"]),
      "budget_trainable_params": int(summaries["budget_prompt_train"]["trainable_params"])}}
  for mode in METHOD_MODES:
    steps_per_s = 1.0 / seconds[mode]
    result[mode] = {"steps_per_s": steps_per_s, "examples_per_s": cfg.batch_size * steps_per_s,
                    "flops_per_step": summaries[mode]["flops_per_step"],
                    "peak_rss_mb": summaries[mode]["peak_rss_mb"]}
  for kind in ("train", "eval"):
    result[f"{kind}_time_ratio"] = (seconds[f"method_{kind}"]
                                    / seconds[f"budget_prompt_{kind}"])
  logging.info("%s vs a plain %d-token prompt: train step time x%.3f, eval step time x%.3f",
               cfg.method, cfg.budget_length, result["train_time_ratio"],
               result["eval_time_ratio"])
  return result


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="prompt-jax bench", description=__doc__.split("\n")[0])
  d = BenchConfig()
  p.add_argument("--peer", action="append", default=[], choices=["peft"],
                 help="Also time a peer implementation (HF PEFT prompt tuning).")
  p.add_argument("--steps", type=int, default=d.steps, help="Timed rounds (median reported).")
  p.add_argument("--warmup", type=int, default=d.warmup, help="Untimed rounds after compiling.")
  p.add_argument("--batch_size", type=int, default=d.batch_size)
  p.add_argument("--input_length", type=int, default=d.input_length)
  p.add_argument("--target_length", type=int, default=d.target_length)
  p.add_argument("--prompt_length", type=int, default=d.prompt_length)
  p.add_argument("--size", default=d.size, help="T5 1.1 size: small, base, large, xl, xxl.")
  p.add_argument("--dropout_rate", type=float, default=d.dropout_rate)
  p.add_argument("--matmul_size", type=int, default=d.matmul_size)
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--method", default=d.method, choices=["", *sorted(METHODS)],
                 help="Time this EPT-style / DePT method against a plain --budget_length "
                      "prompt (train and eval steps) instead of the default modes.")
  p.add_argument("--budget_length", type=int, default=d.budget_length,
                 help="--method: the plain prompt's rows (the parameter budget).")
  p.add_argument("--short_length", type=int, default=d.short_length,
                 help="--method: the method's short prompt rows S.")
  p.add_argument("--tiny", action="store_true",
                 help="A tiny model and shapes (tests); explicit shape flags still apply.")
  p.add_argument("--eval", action="store_true",
                 help="Also time rank classification and greedy decoding (with --peer peft: "
                      "against HF PyTorch).")
  p.add_argument("--bucketing", action="store_true",
                 help="Also time train steps on realistic lengths: length buckets vs fixed "
                      "padding (with --peer peft: vs PEFT padding per batch).")
  p.add_argument("--length_dist", default=d.length_dist, choices=["sst2", "rte"],
                 help="--bucketing: the input-length distribution.")
  p.add_argument("--max_length", type=int, default=d.max_length,
                 help="--bucketing: the feature length (fixed padding pads to it).")
  p.add_argument("--bucket_batches", type=int, default=d.bucket_batches,
                 help="--bucketing: batches per timed pass.")
  p.add_argument("--peak_repeats", type=int, default=d.peak_repeats,
                 help="Repeats of each peak matmul per round (the best counts).")
  p.add_argument("--remat", action="store_true",
                 help="Also time prompt tuning with per-layer rematerialisation and report "
                      "both steps' compiled temp memory (memory_analysis()).")
  p.add_argument("--remat_on", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--skip_train", action="store_true",
                 help="Skip the training-step modes: time only the peak and the --eval / "
                      "--bucketing cases.")
  p.add_argument("--profile", metavar="DIR", default="",
                 help="Instead of timing: trace --steps prompt-tuning steps with jax.profiler "
                      "into DIR and print where the step's time goes (prompt_jax.bench_profile).")
  p.add_argument("--in_process", action="store_true",
                 help="Run every mode in this process (peak RSS becomes cumulative).")
  p.add_argument("--serve", choices=MODES + METHOD_MODES + (PEER_MODE, MATMUL) + ALL_CASES
                 + ("prompt_tuning_dropout_0", "peft_prompt_tuning_dropout_0",
                    "prompt_tuning_remat"),
                 help=argparse.SUPPRESS)
  return p


def config_from_args(args: argparse.Namespace, argv: Sequence[str]) -> BenchConfig:
  """BenchConfig from parsed flags; `--tiny` shrinks the shapes not given explicitly."""
  given = {a.split("=")[0].lstrip("-") for a in argv if a.startswith("--")}
  kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)}
  if args.tiny:
    kwargs.update({k: v for k, v in TINY_SHAPES.items() if k not in given})
  return BenchConfig(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of `prompt-jax bench`: prints one JSON object on stdout."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = _parser().parse_args(argv)
  if not logging.getLogger().handlers:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="bench %(levelname)s %(message)s")
  cfg = config_from_args(args, argv)
  if cfg.steps < 1 or cfg.warmup < 0:
    raise SystemExit("bench: --steps must be >= 1 and --warmup >= 0.")
  if args.serve:
    return serve(args.serve, cfg)
  if args.profile:
    from prompt_jax import bench_profile
    result = bench_profile.profile(cfg, args.profile)
    logging.info("profile:\n%s", bench_profile.report(result))
    print(json.dumps(result), flush=True)
    return 0
  result = run_bench(cfg, args.peer, isolate=not args.in_process)
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
