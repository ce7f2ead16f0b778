"""`prompt-jax bench --profile DIR`: where the prompt-tuning step's time goes.

Traces `--steps` steps of the benchmark's prompt-tuning step with `jax.profiler` (a Perfetto
trace, written under DIR) and joins the trace's per-kernel events with the compiled HLO:

* dot kernels: the wall time during which at least one matmul runs, their FLOPs (counted
  from the HLO's dot shapes) and so the FLOP/s they reach while running;
* everything else: the wall time during which no matmul runs (what keeps the step from the
  matmul peak), and each non-matmul kernel's time grouped by what the model was doing
  (the JAX op path of its HLO metadata, with layer numbers folded together);
* per group, its share of the wall clock (kernels running side by side split that time),
  so the groups' shares add up to the step and FLOPs over a share is a group's real rate.

Times are per step, averaged over the traced steps. Tracing adds some overhead; on a noisy
host the traced step and the best untraced one (also reported) differ either way by up to
~15 %. The breakdown needs the XLA:CPU thunk runtime's per-kernel events; on another
backend it fails readably.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import re
from pathlib import Path
from typing import Any

_INSTR = re.compile(r"\s+(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\((.*)")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_NOT_KERNELS = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end:")


def _dims(shape: str) -> list[int]:
  m = re.match(r"\w+\[([\d,]*)\]", shape)
  return [int(x) for x in m.group(1).split(",") if x] if m else []


def hlo_kernels(hlo_text: str) -> dict[str, dict[str, Any]]:
  """Each top-level instruction of a compiled module: its dot FLOPs and JAX op path.

  A fusion's FLOPs are those of the dots inside its fused computation (2 * output size *
  contracted size), so a kernel counts as a matmul when it contains one.
  """
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(1)
      bodies[current] = []
    elif line.startswith("}"):
      current = None
    elif current is not None:
      bodies[current].append(line)

  parsed = {c: [m.groups() + (line,) for line in lines if (m := _INSTR.match(line))]
            for c, lines in bodies.items()}
  shapes = {c: {name: _dims(shape) for name, shape, *_ in instrs}
            for c, instrs in parsed.items()}

  def dot_flops(computation: str, only: str | None = None) -> float:
    flops = 0.0
    for name, shape, op, args, line in parsed.get(computation, []):
      if op != "dot" or (only is not None and name != only):
        continue
      lhs = shapes[computation][re.findall(r"%([\w.\-]+)", args)[0]]
      contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
      dims = [int(x) for x in contracting.group(1).split(",") if x] if contracting else []
      flops += 2.0 * math.prod(_dims(shape)) * math.prod(lhs[d] for d in dims)
    return flops

  fused = {c for instrs in parsed.values() for *_, line in instrs
           for c in re.findall(r"calls=%([\w.\-]+)", line)}
  kernels = {}
  for computation, instrs in parsed.items():
    if computation in fused:  # Its instructions run inside their caller's kernel.
      continue
    for name, shape, op, _, line in instrs:
      called = re.search(r"calls=%([\w.\-]+)", line)
      flops = dot_flops(called.group(1)) if called else 0.0
      if op == "dot":
        flops = dot_flops(computation, only=name)
      path = re.search(r'op_name="([^"]*)"', line)
      kernels[name] = {"flops": flops, "shape": shape.split("{")[0],
                       "op": op_group(path.group(1) if path else op)}
  return kernels


def op_group(op_name: str) -> str:
  """A JAX op path shortened to what it did: 'encoder/attention/Dropout_0/select_n'."""
  path = re.sub(r"layers_\d+", "layers_N", op_name)
  path = re.sub(r"^jit\([^)]*\)/", "", path)
  backward = path.startswith("transpose(")
  parts = [p for p in re.sub(r"[a-z_]+\(|\)", "", path).split("/") if p]
  keep = [p for p in parts if p not in ("T5Transformer", "layers_N") and not p.startswith(
      "T5Transformer.")]
  return ("backward: " if backward else "") + "/".join(keep[-3:])


def _union_ms(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, -math.inf
  for s, e in sorted(intervals):
    if s > end:
      total += e - s
      end = e
    elif e > end:
      total += e - end
      end = e
  return total / 1e3


def wall_shares(spans: list[tuple[float, float]]) -> list[float]:
  """Each interval's share of the wall clock: while k intervals overlap, each gets 1/k of
  that time, so the shares add up to the union's length (same units as the input)."""
  points = sorted([(s, 1, i) for i, (s, _) in enumerate(spans)]
                  + [(e, -1, i) for i, (_, e) in enumerate(spans)])
  shares, running, last = [0.0] * len(spans), set(), 0.0
  for t, kind, i in points:
    for j in running:
      shares[j] += (t - last) / len(running)
    last = t
    if kind == 1:
      running.add(i)
    else:
      running.discard(i)
  return shares


def breakdown(trace: dict[str, Any], kernels: dict[str, dict[str, Any]], steps: int,
              step_ms: float, top: int = 15) -> dict[str, Any]:
  """The per-step breakdown of a Perfetto trace of `steps` steps of one compiled module,
  which took `step_ms` each on the caller's clock.

  `thread_ms` adds the kernels' own durations (two kernels side by side count twice);
  `wall_ms` is their share of the wall clock (see `wall_shares`), so a group's FLOPs over
  its `wall_ms` is the rate it adds to the step.
  """
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  spans = [e for e in events if e.get("ph") == "X"]
  # Kernels run on XLA's worker threads, or inline on the caller's thread when small: any
  # event named after a top-level HLO instruction is one. (The executor's own "wait for
  # completion" events are no step clock: a step that ran inline waits for nothing.)
  work = [e for e in spans if e["name"] in kernels and not e["name"].startswith(_NOT_KERNELS)]
  if not work:
    raise RuntimeError("the trace has no XLA:CPU kernel events (thunk runtime); "
                       "--profile reads CPU traces only.")
  intervals = [(e["ts"], e["ts"] + e["dur"]) for e in work]
  shares = wall_shares(intervals)
  is_dot = [kernels[e["name"]]["flops"] > 0 for e in work]
  dot_ms = _union_ms([iv for iv, d in zip(intervals, is_dot) if d]) / steps
  dot_flops = sum(kernels[e["name"]]["flops"] for e, d in zip(work, is_dot) if d) / steps
  groups: dict[tuple[bool, str], list[float]] = collections.defaultdict(lambda: [0.0] * 3)
  for e, share, dot in zip(work, shares, is_dot):
    kernel = kernels[e["name"]]
    g = groups[(dot, kernel["shape"] if dot else kernel["op"])]
    g[0] += share / 1e3 / steps
    g[1] += e["dur"] / 1e3 / steps
    g[2] += kernel["flops"] / steps
  ranked = lambda dot: sorted(((k, v) for (d, k), v in groups.items() if d == dot),
                              key=lambda kv: -kv[1][0])[:top]
  return {
      "steps": steps, "step_ms": step_ms, "dot_running_ms": dot_ms, "dot_gflop": dot_flops / 1e9,
      "dot_gflops_while_running": dot_flops / dot_ms / 1e6 if dot_ms else 0.0,
      "no_dot_running_ms": max(step_ms - dot_ms, 0.0),
      "non_dot_kernel_ms": _union_ms([iv for iv, d in zip(intervals, is_dot) if not d]) / steps,
      "non_dot_wall_ms": sum(v[0] for (d, _), v in groups.items() if not d),
      "non_dot_by_op": [{"op": k, "wall_ms": v[0], "thread_ms": v[1]}
                        for k, v in ranked(False)],
      "dots_by_output_shape": [{"shape": k, "wall_ms": v[0], "thread_ms": v[1],
                                "gflop": v[2] / 1e9,
                                "gflops_per_wall_s": v[2] / v[0] / 1e6 if v[0] else 0.0}
                               for k, v in ranked(True)],
  }


def profile(cfg, out_dir: str) -> dict[str, Any]:
  """Traces `cfg.steps` prompt-tuning steps after `cfg.warmup`; returns the breakdown."""
  import jax
  from prompt_jax import bench
  runner = bench.JaxStepRunner("prompt_tuning", cfg)
  for _ in range(max(cfg.warmup, 1)):
    runner.step()
  untraced = min(runner.step() for _ in range(cfg.steps)) * 1e3
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  jax.profiler.start_trace(str(out), create_perfetto_trace=True)
  try:
    traced = [runner.step() for _ in range(cfg.steps)]
  finally:
    jax.profiler.stop_trace()
  traces = sorted(out.glob("plugins/profile/*/perfetto_trace.json.gz"),
                  key=lambda p: p.stat().st_mtime)
  if not traces:
    raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {out}.")
  with gzip.open(traces[-1]) as f:
    trace = json.load(f)
  hlo = runner.compiled.as_text()
  (out / "step.hlo.txt").write_text(hlo)
  kernels = hlo_kernels(hlo)
  result = breakdown(trace, kernels, steps=cfg.steps, step_ms=sum(traced) / len(traced) * 1e3)
  result.update(untraced_best_step_ms=untraced, trace=str(traces[-1]),
                flops_per_step=runner.flops,
                hlo_dot_gflop=sum(k["flops"] for k in kernels.values()) / 1e9)
  return result


def report(result: dict[str, Any]) -> str:
  """The breakdown as a few readable lines (stderr; the JSON goes to stdout)."""
  lines = [f"step {result['step_ms']:.1f} ms traced ({result['untraced_best_step_ms']:.1f} ms "
           f"best untraced); matmuls running {result['dot_running_ms']:.1f} ms at "
           f"{result['dot_gflops_while_running']:.1f} GFLOP/s; no matmul running "
           f"{result['no_dot_running_ms']:.1f} ms; non-matmul kernels' wall share "
           f"{result['non_dot_wall_ms']:.1f} ms",
           "  wall ms  thread ms  non-matmul op"]
  lines += [f"  {r['wall_ms']:7.2f}  {r['thread_ms']:9.2f}  {r['op']}"
            for r in result["non_dot_by_op"]]
  lines.append("  wall ms  thread ms   GFLOP  GFLOP/s  matmul output")
  lines += [f"  {r['wall_ms']:7.2f}  {r['thread_ms']:9.2f}  {r['gflop']:6.2f}  "
            f"{r['gflops_per_wall_s']:7.1f}  {r['shape']}" for r in result["dots_by_output_shape"]]
  return "\n".join(lines)
