"""`prompt-jax bench` on the tiny model: the JSON's shape, types and signs (never its speed)."""

import json
import math

import numpy as np
import pytest

from prompt_jax import bench

MODE_KEYS = {"steps_per_s", "examples_per_s", "flops_per_step", "flops_fraction_of_peak",
             "peak_rss_mb"}
PEER_KEYS = {"steps_per_s", "examples_per_s", "peak_rss_mb"}
# Dropout off: its RNG makes XLA CPU compiles several times slower (the bench runs with it).
TINY = ["--tiny", "--steps", "2", "--warmup", "1", "--dropout_rate", "0"]


def _positive_floats(figures: dict, keys: set) -> None:
  assert set(figures) == keys
  for key, value in figures.items():
    assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)


def test_tiny_bench_prints_one_json_object(capsys):
  """Every mode and PEFT, timed in rounds (in this process: the subprocesses would
  import and compile all over again; `test_child_process_protocol` covers them)."""
  pytest.importorskip("peft")  # The `test` extra installs it.
  assert bench.main([*TINY, "--in_process", "--peer", "peft"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1  # One JSON object; logs went to stderr.
  result = json.loads(out[0])
  assert set(result) == {"matmul_peak_flops", "prompt_tuning", "model_tuning",
                         "peft_prompt_tuning", "speedup_vs_peft", "peak"}
  peak = result["peak"]  # The robust peak is the one the fractions use, PyTorch's beside it.
  assert result["matmul_peak_flops"] == peak["jax_matmul_flops"] == max(
      peak["jax_per_shape_flops"])
  assert peak["torch_matmul_flops"] > 0 and len(peak["shapes"]) == 4
  for key in ("matmul_peak_flops", "speedup_vs_peft"):
    assert isinstance(result[key], float) and result[key] > 0
  for mode in ("prompt_tuning", "model_tuning"):
    _positive_floats(result[mode], MODE_KEYS)
  _positive_floats(result["peft_prompt_tuning"], PEER_KEYS)
  for mode in ("prompt_tuning", "model_tuning", "peft_prompt_tuning"):
    figures = result[mode]  # Tiny batch size 2.
    assert math.isclose(figures["examples_per_s"], 2 * figures["steps_per_s"])
  pt, mt = result["prompt_tuning"], result["model_tuning"]
  assert math.isclose(result["speedup_vs_peft"],
                      pt["steps_per_s"] / result["peft_prompt_tuning"]["steps_per_s"])
  assert math.isclose(pt["flops_fraction_of_peak"],
                      pt["flops_per_step"] * pt["steps_per_s"] / result["matmul_peak_flops"])
  # Freezing removes the weight gradients: fewer FLOPs per step on the same shapes.
  assert pt["flops_per_step"] < mt["flops_per_step"]


def test_child_process_protocol():
  """A runner in its own process answers `step` with seconds and `summary` with JSON."""
  cfg = bench.config_from_args(bench._parser().parse_args(TINY), TINY)
  child = bench.ChildRunner(bench.MATMUL, cfg)
  try:
    child.wait_ready()
    seconds = [child.step() for _ in range(2)]
    summary = child.summary()
  finally:
    child.close()
  assert child.proc.returncode == 0
  assert all(isinstance(s, float) and s > 0 for s in seconds)
  assert summary == {"flops_per_step": 2.0 * bench.TINY_SHAPES["matmul_size"] ** 3}


def test_tiny_config_keeps_explicit_flags():
  args = ["--tiny", "--batch_size", "3", "--prompt_length=5"]
  cfg = bench.config_from_args(bench._parser().parse_args(args), args)
  assert (cfg.batch_size, cfg.prompt_length, cfg.input_length) == (
      3, 5, bench.TINY_SHAPES["input_length"])
  assert bench.config_from_args(bench._parser().parse_args([]), []) == bench.BenchConfig()


def test_tiny_bench_eval_and_bucketing_sections_with_the_peer(capsys):
  """--eval / --bucketing run for real on both sides: ours and the peer's (HF `model(...)`
  scoring and `generate`, PEFT on the bucketing batches)."""
  pytest.importorskip("peft")
  args = ["--tiny", "--steps", "1", "--warmup", "0", "--dropout_rate", "0", "--in_process",
          "--skip_train", "--eval", "--bucketing", "--max_length", "32", "--bucket_batches", "1",
          "--peer", "peft"]
  assert bench.main(args) == 0
  result = json.loads(capsys.readouterr().out.strip())
  assert set(result) == {"matmul_peak_flops", "peak", "eval", "bucketing"}
  for kind in ("rank_classification", "greedy_decode"):
    _positive_floats(result["eval"][kind], {"examples_per_s", "hf_examples_per_s",
                                            "speedup_vs_hf"})
  buckets = result["bucketing"]
  assert (buckets["length_dist"], buckets["max_length"]) == ("sst2", 32)
  _positive_floats({k: v for k, v in buckets.items() if k not in ("length_dist", "max_length")},
                   {"examples_per_s", "fixed_padding_examples_per_s", "speedup_vs_fixed_padding",
                    "peft_examples_per_s", "speedup_vs_peft"})


def test_peer_sections_and_dropout_0_are_assembled_as_ratios():
  cfg = bench.BenchConfig(batch_size=2, eval=True, bucketing=True, dropout_rate=0.1)
  seconds = {"prompt_tuning": 0.5, "model_tuning": 1.0, "peft_prompt_tuning": 1.0,
             "prompt_tuning_dropout_0": 0.25, "peft_prompt_tuning_dropout_0": 1.0,
             "peak": 1.0, "torch_peak": 1.0, "eval_rank": 0.5, "hf_eval_rank": 2.0,
             "eval_greedy": 1.0, "hf_eval_greedy": 3.0, "bucketing": 1.0, "fixed_padding": 4.0,
             "peft_bucketing": 2.0}
  step = {"flops_per_step": 10.0, "peak_rss_mb": 1.0}
  peak = {"peak_flops": 100.0, "per_shape_flops": [50.0, 100.0], "shapes": [[1, 2, 3]] * 2}
  summaries = {"prompt_tuning": step, "model_tuning": step, "peft_prompt_tuning": step,
               "prompt_tuning_dropout_0": {**step, "flops_per_step": 9.0}, "peak": peak,
               "torch_peak": {**peak, "peak_flops": 200.0},
               **{k: {"examples_per_step": 8.0} for k in
                  ("eval_rank", "hf_eval_rank", "eval_greedy", "hf_eval_greedy", "bucketing",
                   "fixed_padding", "peft_bucketing")}}
  result = bench.assemble(cfg, seconds, summaries)
  assert "remat" not in result
  remat = bench.assemble(bench.BenchConfig(remat=True, skip_train=True), {
      "peak": 1.0, "prompt_tuning": 0.5, "prompt_tuning_remat": 1.0}, {
      "peak": peak, "prompt_tuning": {"temp_mb": 8.0}, "prompt_tuning_remat": {"temp_mb": 2.0}})
  assert remat["remat"] == {"steps_per_s": 2.0, "remat_steps_per_s": 1.0, "temp_mb": 8.0,
                            "remat_temp_mb": 2.0, "time_ratio": 2.0, "temp_memory_ratio": 0.25}
  assert result["matmul_peak_flops"] == 100.0 and result["peak"]["torch_matmul_flops"] == 200.0
  assert result["speedup_vs_peft"] == 2.0 and result["dropout_0"]["speedup_vs_peft"] == 4.0
  assert result["dropout_0"]["prompt_tuning"]["flops_fraction_of_peak"] == 9.0 * 4.0 / 100.0
  assert result["eval"]["rank_classification"] == {
      "examples_per_s": 16.0, "hf_examples_per_s": 4.0, "speedup_vs_hf": 4.0}
  assert result["eval"]["greedy_decode"]["speedup_vs_hf"] == 3.0
  assert result["bucketing"]["examples_per_s"] == 8.0
  assert result["bucketing"]["fixed_padding_examples_per_s"] == 2.0
  assert result["bucketing"]["peft_examples_per_s"] == 4.0
  assert result["bucketing"]["speedup_vs_peft"] == 2.0


def test_length_batches_follow_the_distribution_and_buckets_cut_only_padding():
  from prompt_jax import bench_cases
  from prompt_jax.train import inputs
  cfg = bench.BenchConfig(batch_size=4, max_length=512, bucket_batches=3, target_length=8)
  batches = bench_cases.length_batches(cfg, 100)
  assert len(batches) == 3 and batches[0]["encoder_input_tokens"].shape == (4, 512)
  lengths = np.concatenate([(b["encoder_input_tokens"] > 0).sum(1) for b in batches])
  assert 8 <= np.median(lengths) <= 64 and lengths.max() <= 512  # SST-2-like: short.
  for b in batches:
    cut = inputs.bucket_batch(b, inputs.LengthBuckets())
    n = cut["encoder_input_tokens"].shape[1]
    assert n in (16, 32, 64, 128, 256, 512) and n < 512
    assert (b["encoder_input_tokens"][:, n:] == 0).all()
