"""`prompt-jax bench --profile`: the HLO join, the interval arithmetic, and a tiny traced run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import bench, bench_profile


def test_hlo_kernels_count_dot_flops_inside_and_outside_fusions():
  a = np.ones((12, 8), np.float32)
  b = np.ones((8, 20), np.float32)
  hlo = jax.jit(lambda x, y: jnp.tanh(x @ y) * 2.0).lower(a, b).compile().as_text()
  kernels = bench_profile.hlo_kernels(hlo)
  dots = [k for k in kernels.values() if k["flops"] > 0]
  assert [k["flops"] for k in dots] == [2.0 * 12 * 8 * 20], kernels  # One matmul, counted once.
  assert all(k["flops"] == 0 for k in kernels.values() if k not in dots)


def _event(name, ts, dur, tid=1):
  return {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def test_breakdown_unions_concurrent_kernels_per_step():
  """Two steps of 100 us; per step a dot on each thread overlapping by half, and one
  non-dot kernel while no dot runs."""
  kernels = {"dot.1": {"flops": 2e6, "shape": "f32[4,4]", "op": "mlp/dot_general"},
             "dot.2": {"flops": 2e6, "shape": "f32[4,4]", "op": "mlp/dot_general"},
             "add.1": {"flops": 0.0, "shape": "f32[4]", "op": "encoder/add"}}
  events = []
  for start in (0, 1000):
    events += [_event("dot.1", start, 40), _event("dot.2", start + 20, 40, tid=2),
               _event("add.1", start + 70, 20), _event("ThunkExecutor::Execute", start, 99)]
  result = bench_profile.breakdown({"traceEvents": events}, kernels, steps=2, step_ms=0.1)
  assert result["steps"] == 2 and result["step_ms"] == pytest.approx(0.1)
  assert result["dot_running_ms"] == pytest.approx(0.06)  # [0, 60) us: the union.
  assert result["dot_gflop"] == pytest.approx(4e-3)
  assert result["dot_gflops_while_running"] == pytest.approx(4e6 / 60e-6 / 1e9)
  assert result["no_dot_running_ms"] == pytest.approx(0.04)
  assert result["non_dot_by_op"] == [{"op": "encoder/add", "wall_ms": pytest.approx(0.02),
                                      "thread_ms": pytest.approx(0.02)}]
  dots, = result["dots_by_output_shape"]  # Side by side for 20 of their 80 thread-us.
  assert dots["thread_ms"] == pytest.approx(0.08) and dots["wall_ms"] == pytest.approx(0.06)
  assert dots["gflops_per_wall_s"] == pytest.approx(result["dot_gflops_while_running"])


def test_wall_shares_split_overlaps_and_add_up_to_the_union():
  shares = bench_profile.wall_shares([(0, 10), (5, 15), (20, 30), (21, 22)])
  assert shares == pytest.approx([7.5, 7.5, 9.5, 0.5])


def test_breakdown_refuses_a_trace_without_cpu_kernels():
  with pytest.raises(RuntimeError, match="no XLA:CPU kernel events"):
    bench_profile.breakdown({"traceEvents": []}, {}, steps=1, step_ms=1.0)


def test_op_group_folds_layers_and_marks_the_backward_pass():
  name = "jit(wrapped)/transpose(jvp(T5Transformer))/T5Transformer.encode/encoder/layers_3/mlp/mul"
  assert bench_profile.op_group(name) == "backward: encoder/mlp/mul"


def test_tiny_profile_run_prints_its_breakdown(tmp_path, capsys):
  assert bench.main(["--tiny", "--steps", "2", "--warmup", "1", "--dropout_rate", "0",
                     "--profile", str(tmp_path)]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["steps"] == 2 and result["dot_gflop"] > 0
  # Each matmul kernel of the compiled step is found once per step in the trace.
  assert result["dot_gflop"] == pytest.approx(result["hlo_dot_gflop"])
  assert result["dot_gflop"] * 1e9 <= result["flops_per_step"]  # Cost analysis counts more.
  # The kernels' union fits in the caller's clock (which also counts dispatch).
  assert 0 < result["dot_running_ms"] <= result["step_ms"]
  assert (tmp_path / "step.hlo.txt").exists() and result["non_dot_by_op"]
