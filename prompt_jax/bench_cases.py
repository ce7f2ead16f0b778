"""The `prompt-jax bench` cases beyond our training step: the PEFT peer, evaluation, buckets, peak.

Each case is a set of runners (`step()` -> seconds, `summary()` -> figures) that
`prompt_jax.bench` times in its interleaved rounds, beside its own modes and peers:

* `--eval`: `eval_rank` scores 3 label strings for each of B examples with one encoder pass
  per example (`adapter.score_labels`); `eval_greedy` decodes up to `--target_length` tokens
  greedily with the KV cache (`adapter.predict`). With `--peer peft` the HF PyTorch
  `T5ForConditionalGeneration` of the same shape does the same work as an HF user would:
  `model(input_ids, labels=...)` on the B*3 (example, label) pairs, and `generate(greedy,
  max_new_tokens=T)`. Our model carries a P-row prompt, so HF's inputs carry P more tokens
  (the same encoder length, P+L). Random weights almost never emit EOS, so both decode
  all T tokens.
* `--bucketing`: prompt-tuning train steps over the same `--bucket_batches` batches whose
  input lengths are drawn from a SST-2-like or RTE-like distribution (`LENGTH_DISTS`, capped
  at `--max_length`, the paper's 512): `bucketing` pads each batch to its bucket
  (`prompt_jax.train.inputs.LengthBuckets`), `fixed_padding` to `--max_length`, and (with
  `--peer peft`) `peft_bucketing` pads each batch to its longest row, as HF's collators do
  (`padding="longest"`). One step of these runners is one pass over all the batches.
* `peak` (always): the float32 matmul peak measured robustly, the best of `--peak_repeats`
  repeats of each of a few matmuls of the step's own shapes, in the same rounds as the timed
  steps; with `--peer peft` also PyTorch's peak on the same shapes (`torch_peak`).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np

EVAL_MODES = ("eval_rank", "eval_greedy")
HF_EVAL_MODES = ("hf_eval_rank", "hf_eval_greedy")
BUCKET_MODES = ("bucketing", "fixed_padding")
PEFT_BUCKET_MODE = "peft_bucketing"
PEAK_MODES = ("peak",)
TORCH_PEAK_MODE = "torch_peak"
REMAT = "_remat"  # The bench's suffix for a mode with per-layer rematerialisation.
NUM_LABELS = 3
LABEL_LENGTH = 3  # Tokens per label string, EOS included (e.g. "entailment" + EOS).
# Input lengths in T5 SentencePiece tokens, task prefix and EOS included: lognormal stand-ins
# (median, sigma) of our own choosing for SST-2 (single movie-review sentences, ~20 words)
# and RTE (premise + hypothesis, ~50-60 words), not the datasets' measured histograms.
LENGTH_DISTS = {"sst2": (28.0, 0.5), "rte": (75.0, 0.45)}


def draw_lengths(dist: str, n: int, max_length: int, seed: int) -> np.ndarray:
  """n input lengths from a named distribution, clipped to [4, max_length]."""
  if dist not in LENGTH_DISTS:
    raise ValueError(f"Unknown length distribution {dist!r}; one of {sorted(LENGTH_DISTS)}.")
  median, sigma = LENGTH_DISTS[dist]
  raw = np.random.default_rng(seed).lognormal(np.log(median), sigma, n)
  return np.clip(np.round(raw), 4, max_length).astype(np.int64)


def length_batches(cfg, vocab_size: int) -> list[dict[str, np.ndarray]]:
  """`cfg.bucket_batches` full-length ([B, max_length], [B, target_length]) batches whose
  rows have drawn lengths (random tokens, EOS last, then padding 0)."""
  rng = np.random.default_rng(cfg.seed + 1)
  b, lmax, t = cfg.batch_size, cfg.max_length, cfg.target_length
  lengths = draw_lengths(cfg.length_dist, cfg.bucket_batches * b, lmax, cfg.seed)
  out = []
  for i in range(cfg.bucket_batches):
    enc = np.zeros((b, lmax), np.int32)
    tgt = np.zeros((b, t), np.int32)
    for r, n in enumerate(lengths[i * b:(i + 1) * b]):
      enc[r, :n] = rng.integers(2, vocab_size, n)
      enc[r, n - 1] = 1
      m = int(rng.integers(2, min(t, 4) + 1))  # A label word or two, then EOS.
      tgt[r, :m] = rng.integers(2, vocab_size, m)
      tgt[r, m - 1] = 1
    dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
    out.append({"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
                "decoder_target_tokens": tgt,
                "decoder_loss_weights": (tgt > 0).astype(np.float32)})
  return out


def _jax_model(cfg):
  """(prompted T5, full random params) of the bench shape."""
  import flax.linen as nn
  from prompt_jax import bench
  from prompt_jax.models import T5Transformer
  from prompt_jax.prompts import Prompt
  from prompt_jax.train import builder
  model = T5Transformer(bench.model_config(cfg), prompt=Prompt(cfg.prompt_length))
  params = bench.random_params(nn.unbox(builder.abstract_params(model)), cfg.seed)
  return model, params


class JaxEvalRunner:
  """Our rank classification (`eval_rank`) or greedy decoding (`eval_greedy`) of B examples."""

  def __init__(self, mode: str, cfg):
    import functools
    import jax
    from prompt_jax import bench
    from prompt_jax.train import adapter as adapter_lib
    model, params = _jax_model(cfg)
    adapter = adapter_lib.ModelAdapter(model)
    self.params = jax.device_put(params)
    batch = bench.synthetic_batch(cfg, model.config.vocab_size)
    self.inputs = jax.device_put(batch["encoder_input_tokens"])
    if mode == "eval_rank":
      rng = np.random.default_rng(cfg.seed + 2)
      labels = rng.integers(2, model.config.vocab_size, (NUM_LABELS, LABEL_LENGTH))
      labels[:, -1] = 1
      self.args = (self.params, self.inputs, jax.device_put(labels.astype(np.int32)))
      fn = jax.jit(adapter.score_labels)
    else:
      self.args = (self.params, self.inputs)
      fn = jax.jit(functools.partial(adapter.predict, max_decode_length=cfg.target_length))
    start = time.perf_counter()
    self.fn = fn.lower(*self.args).compile(bench.TINY_COMPILER_OPTIONS if cfg.tiny else None)
    logging.info("%s: compiled in %.1f s", mode, time.perf_counter() - start)
    self.examples = cfg.batch_size

  def step(self) -> float:
    import jax
    start = time.perf_counter()
    jax.block_until_ready(self.fn(*self.args))
    return time.perf_counter() - start

  def summary(self) -> dict[str, float]:
    from prompt_jax import bench
    return {"examples_per_step": float(self.examples), "peak_rss_mb": bench.peak_rss_mb()}


def _hf_model(cfg):
  import torch
  import transformers
  from prompt_jax import bench
  torch.manual_seed(cfg.seed)
  torch.set_num_threads(bench.available_cores())
  mc = bench.model_config(cfg)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**mc.to_hf_dict()))
  if model.lm_head.weight is model.shared.weight:  # transformers >= 5 ties by default.
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
  return model.eval(), mc


class HfEvalRunner:
  """HF PyTorch: `model(...)` scoring of every (example, label) pair, or `generate`."""

  def __init__(self, mode: str, cfg):
    import torch
    self.torch = torch
    self.model, mc = _hf_model(cfg)
    rng = np.random.default_rng(cfg.seed)
    b, n = cfg.batch_size, cfg.input_length + cfg.prompt_length  # The prompt as P tokens.
    enc = rng.integers(2, mc.vocab_size, (b, n))
    enc[:, -1] = 1
    self.mode, self.examples, self.t = mode, b, cfg.target_length
    if mode == "hf_eval_rank":
      labels = rng.integers(2, mc.vocab_size, (NUM_LABELS, LABEL_LENGTH))
      labels[:, -1] = 1
      self.input_ids = torch.from_numpy(np.repeat(enc, NUM_LABELS, axis=0))  # [B*C, L]
      self.labels = torch.from_numpy(np.tile(labels, (b, 1)))  # [B*C, T]
    else:
      self.input_ids = torch.from_numpy(enc)
    self.attention_mask = torch.ones_like(self.input_ids)

  def _rank(self):
    logits = self.model(input_ids=self.input_ids, attention_mask=self.attention_mask,
                        labels=self.labels).logits  # [B*C, T, V]
    logp = self.torch.log_softmax(logits, dim=-1)
    ll = logp.gather(-1, self.labels[:, :, None])[:, :, 0].sum(-1)
    return ll.reshape(self.examples, NUM_LABELS)

  def step(self) -> float:
    start = time.perf_counter()
    with self.torch.inference_mode():
      if self.mode == "hf_eval_rank":
        self._rank()
      else:
        self.model.generate(input_ids=self.input_ids, attention_mask=self.attention_mask,
                            max_new_tokens=self.t, do_sample=False, num_beams=1)
    return time.perf_counter() - start

  def summary(self) -> dict[str, float]:
    from prompt_jax import bench
    return {"examples_per_step": float(self.examples), "peak_rss_mb": bench.peak_rss_mb()}


class JaxBucketRunner:
  """Prompt-tuning train steps over the length batches, bucketed or padded to max_length."""

  def __init__(self, mode: str, cfg):
    import jax
    from prompt_jax import bench
    from prompt_jax.train import builder
    from prompt_jax.train import inputs as inputs_lib
    from prompt_jax.train import optimizer as opt_lib
    model, params = _jax_model(cfg)
    groups = opt_lib.PROMPT_TUNING
    self.setup = builder.build(model, groups, builder.make_mesh(1, jax.devices()[:1]),
                               enable_dropout=cfg.dropout_rate > 0)
    trainable, frozen = opt_lib.split_params(params, groups.labels(params))
    self.frozen = self.setup.put_frozen(frozen)
    self.state = self.setup.init_state(trainable, cfg.seed)
    buckets = inputs_lib.LengthBuckets() if mode == "bucketing" else inputs_lib.FIXED_SHAPES
    self.batches = [self.setup.put_batch(inputs_lib.bucket_batch(b, buckets))
                    for b in length_batches(cfg, model.config.vocab_size)]
    shapes = sorted({int(b["encoder_input_tokens"].shape[1]) for b in self.batches})
    start = time.perf_counter()
    self.step()  # Compiles every bucket's step once.
    logging.info("%s: encoder lengths %s, compiled in %.1f s", mode, shapes,
                 time.perf_counter() - start)
    self.examples = cfg.batch_size * len(self.batches)
    self.peak = bench.peak_rss_mb

  def step(self) -> float:
    import jax
    start = time.perf_counter()
    for batch in self.batches:
      self.state, sums = self.setup.step_fn(self.state, self.frozen, batch)
    jax.block_until_ready((self.state, sums))
    return time.perf_counter() - start

  def summary(self) -> dict[str, float]:
    return {"examples_per_step": float(self.examples), "peak_rss_mb": self.peak()}


class PeftBucketRunner:
  """HF PEFT prompt tuning over the same batches, each padded to its longest row."""

  def __init__(self, cfg):
    import torch
    from prompt_jax import bench
    self.torch = torch
    self.peft = PeftRunner(cfg)
    self.batches = []
    for b in length_batches(cfg, bench.model_config(cfg).vocab_size):
      enc_len = int((b["encoder_input_tokens"] > 0).sum(1).max())
      dec_len = int((b["decoder_target_tokens"] > 0).sum(1).max())
      ids = torch.from_numpy(b["encoder_input_tokens"][:, :enc_len].astype(np.int64))
      labels = b["decoder_target_tokens"][:, :dec_len].astype(np.int64)
      labels = np.where(labels > 0, labels, -100)  # HF's collator: padding ignored.
      self.batches.append({"input_ids": ids, "attention_mask": (ids > 0).long(),
                           "labels": torch.from_numpy(labels)})
    self.examples = cfg.batch_size * len(self.batches)

  def step(self) -> float:
    start = time.perf_counter()
    for inputs in self.batches:
      self.peft.inputs = inputs
      self.peft.step()
    return time.perf_counter() - start

  def summary(self) -> dict[str, float]:
    from prompt_jax import bench
    return {"examples_per_step": float(self.examples), "peak_rss_mb": bench.peak_rss_mb()}


def peak_shapes(cfg) -> list[tuple[int, int, int]]:
  """(M, K, N) of the step's big matmuls: encoder rows x D -> HK (Q / K / V) and -> F
  (wi), F -> D (wo); and the n x n."""
  from prompt_jax import bench
  mc = bench.model_config(cfg)
  rows = cfg.batch_size * (cfg.input_length + cfg.prompt_length)
  hk = mc.num_heads * mc.d_kv
  return [(rows, mc.d_model, hk), (rows, mc.d_model, mc.d_ff),
          (rows, mc.d_ff, mc.d_model), (cfg.matmul_size,) * 3]


class PeakRunner:
  """Best-of-repeats float32 matmul FLOP/s over the step's shapes (JAX or PyTorch)."""

  def __init__(self, cfg, framework: str = "jax"):
    self.shapes, self.repeats, self.framework = peak_shapes(cfg), cfg.peak_repeats, framework
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32))
             for m, k, n in self.shapes]
    if framework == "jax":
      import jax
      import jax.numpy as jnp
      self.pairs = [(jax.device_put(a), jax.device_put(b)) for a, b in pairs]
      self.fns = [jax.jit(jnp.matmul).lower(a, b).compile() for a, b in self.pairs]
      self.run = lambda i: self.fns[i](*self.pairs[i]).block_until_ready()
    else:
      import torch
      from prompt_jax import bench
      torch.set_num_threads(bench.available_cores())
      self.pairs = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in pairs]
      self.run = lambda i: torch.matmul(*self.pairs[i])
    self.best = [float("inf")] * len(self.shapes)

  def step(self) -> float:
    start = time.perf_counter()
    for i in range(len(self.shapes)):
      for _ in range(self.repeats):
        t0 = time.perf_counter()
        self.run(i)
        self.best[i] = min(self.best[i], time.perf_counter() - t0)
    return time.perf_counter() - start

  def summary(self) -> dict[str, Any]:
    flops = [2.0 * m * k * n / t for (m, k, n), t in zip(self.shapes, self.best)]
    return {"peak_flops": max(flops), "per_shape_flops": flops,
            "shapes": [list(s) for s in self.shapes]}


def make_runner(name: str, cfg):
  """A runner of this module's cases by name."""
  if name in EVAL_MODES:
    return JaxEvalRunner(name, cfg)
  if name in HF_EVAL_MODES:
    return HfEvalRunner(name, cfg)
  if name in BUCKET_MODES:
    return JaxBucketRunner(name, cfg)
  if name == PEFT_BUCKET_MODE:
    return PeftBucketRunner(cfg)
  if name == "peak":
    return PeakRunner(cfg, "jax")
  if name == TORCH_PEAK_MODE:
    return PeakRunner(cfg, "torch")
  raise ValueError(f"Unknown bench case {name!r}.")


def case_names(cfg, peers) -> list[str]:
  """The runners of the cases `cfg` asks for (peers when `--peer peft` is given)."""
  peft = "peft" in peers
  names = list(PEAK_MODES) + ([TORCH_PEAK_MODE] if peft else [])
  if cfg.eval:
    names += list(EVAL_MODES) + (list(HF_EVAL_MODES) if peft else [])
  if cfg.bucketing:
    names += list(BUCKET_MODES) + ([PEFT_BUCKET_MODE] if peft else [])
  return names


def remat_section(seconds: Any, summaries: Any) -> dict[str, float]:
  """Prompt tuning with and without per-layer remat: speed and compiled temp memory."""
  plain, remat = summaries["prompt_tuning"], summaries["prompt_tuning" + REMAT]
  return {"steps_per_s": 1.0 / seconds["prompt_tuning"],
          "remat_steps_per_s": 1.0 / seconds["prompt_tuning" + REMAT],
          "temp_mb": plain["temp_mb"], "remat_temp_mb": remat["temp_mb"],
          "time_ratio": seconds["prompt_tuning" + REMAT] / seconds["prompt_tuning"],
          "temp_memory_ratio": remat["temp_mb"] / max(plain["temp_mb"], 1e-9)}


def assemble_cases(cfg, seconds, summaries) -> dict[str, Any]:
  """The `peak`, `eval` and `bucketing` sections of the bench JSON."""
  rate = lambda name: summaries[name]["examples_per_step"] / seconds[name]
  out: dict[str, Any] = {"peak": {"jax_matmul_flops": summaries["peak"]["peak_flops"],
                                  "shapes": summaries["peak"]["shapes"],
                                  "jax_per_shape_flops": summaries["peak"]["per_shape_flops"]}}
  if TORCH_PEAK_MODE in summaries:
    out["peak"]["torch_matmul_flops"] = summaries[TORCH_PEAK_MODE]["peak_flops"]
    out["peak"]["torch_per_shape_flops"] = summaries[TORCH_PEAK_MODE]["per_shape_flops"]
  if cfg.eval:
    out["eval"] = {}
    for key, ours, hf in (("rank_classification", "eval_rank", "hf_eval_rank"),
                          ("greedy_decode", "eval_greedy", "hf_eval_greedy")):
      section = {"examples_per_s": rate(ours)}
      if hf in seconds:
        section["hf_examples_per_s"] = rate(hf)
        section["speedup_vs_hf"] = section["examples_per_s"] / section["hf_examples_per_s"]
      out["eval"][key] = section
  if cfg.bucketing:
    section = {"examples_per_s": rate("bucketing"),
               "fixed_padding_examples_per_s": rate("fixed_padding"),
               "length_dist": cfg.length_dist, "max_length": cfg.max_length}
    section["speedup_vs_fixed_padding"] = (section["examples_per_s"]
                                           / section["fixed_padding_examples_per_s"])
    if PEFT_BUCKET_MODE in seconds:
      section["peft_examples_per_s"] = rate(PEFT_BUCKET_MODE)
      section["speedup_vs_peft"] = section["examples_per_s"] / section["peft_examples_per_s"]
    out["bucketing"] = section
  return out


class PeftRunner:
  """HF PEFT prompt tuning of a random T5 of the same shape (AdamW on the prompt)."""

  def __init__(self, cfg: Any):
    import peft
    import torch
    import transformers
    from prompt_jax.bench import available_cores, model_config, synthetic_batch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(available_cores())
    mc = model_config(cfg)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**mc.to_hf_dict()))
    if model.lm_head.weight is model.shared.weight:  # transformers >= 5 ties by default.
      model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    # One submodule: the prompt goes in front of the encoder input only, as ours does (and as
    # Lester et al.). PEFT's seq2seq default (2) also prepends P tokens to the decoder input,
    # a different method that does more work per step.
    config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM,
                                     num_virtual_tokens=cfg.prompt_length,
                                     num_transformer_submodules=1)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5.
      warnings.simplefilter("ignore", FutureWarning)
      self.model = peft.get_peft_model(model, config)
    self.model.train()  # Dropout on, as in our steps.
    trainable = [p for p in self.model.parameters() if p.requires_grad]
    logging.info("peft: %d trainable parameters, torch threads %d",
                 sum(p.numel() for p in trainable), torch.get_num_threads())
    self.optimizer = torch.optim.AdamW(trainable, lr=0.3)
    batch = synthetic_batch(cfg, mc.vocab_size)
    self.inputs = {"input_ids": torch.from_numpy(batch["encoder_input_tokens"].astype(np.int64)),
                   "labels": torch.from_numpy(batch["decoder_target_tokens"].astype(np.int64))}
    self.inputs["attention_mask"] = torch.ones_like(self.inputs["input_ids"])

  def step(self) -> float:
    start = time.perf_counter()
    self.optimizer.zero_grad(set_to_none=True)
    self.model(**self.inputs).loss.backward()
    self.optimizer.step()
    return time.perf_counter() - start

  def summary(self) -> dict[str, float]:
    from prompt_jax.bench import peak_rss_mb
    return {"peak_rss_mb": peak_rss_mb()}
