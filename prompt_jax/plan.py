"""`prompt-jax plan`: will this run fit? The train step compiled ahead of time, no weights.

  prompt-jax plan --gin_file=models/t5_1_1.gin --gin_file=models/sizes/xxl.gin \\
      --gin_file=runs/prompt_finetune.gin --gin_file=methods/prompt_tuning.gin \\
      --gin_file=prompts/sampled_vocab.gin --gin.NUM_PARTITIONS=8 \\
      --devices=32 --device_memory=16GiB

The run's gin config (the same files as `prompt-jax train`; MODEL_DIR and the other
required macros may be left unset) gives the model, the prompt module, the parameter groups,
the batch and the mesh. The train step is lowered from `jax.ShapeDtypeStruct`s carrying the
run's shardings and compiled for `--devices` emulated CPU devices, or for a TPU slice
(`--topology=v3-32`, needs the optional libtpu, no TPU needed). Printed: per-device
argument / output / temp / peak bytes from the compiler's memory analysis, whether the peak fits
`--device_memory`, the collectives in the compiled HLO with their sizes; then one JSON line.

CPU figures are the CPU compiler's (its fusion and layouts differ from TPU's): an estimate
of the same partitioned program, not a TPU measurement.

TPU devices are counted as `jax.devices()` lists them on the slice: a v2 / v3 core, a v5e /
v6e chip, a v5p chip (megacore, 2 TensorCores) and, for v4, a megacore chip too: `v4-64`
(64 TensorCores, 32 chips) is planned as 32 devices. libtpu's compile-only v4 topology has
no megacore (one device per TensorCore), so v4 is compiled for that many TensorCore devices
(`v4-64` -> libtpu's `v4:2x2x4`, 16 chips x 2 cores): the mesh and per-device shapes are the
run's, the fusion is one TensorCore's; compare with a v4 chip's 32 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Sequence

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}
_PLACEHOLDERS = {"MODEL_DIR": "'/tmp/prompt-jax-plan'", "MIXTURE_OR_TASK_NAME": "'plan'",
                 "INITIAL_CHECKPOINT_PATH": "'/none'"}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


# Chips -> the chip grid of the usual slice shapes (2D: v2, v3, v5e, v6e; 3D: v4, v5p).
_GRIDS_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16",
             512: "16x32", 1024: "32x32"}
_GRIDS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"}
# Generation in the slice name -> (libtpu's name, grids, named units per compiled chip).
# v2 / v3 / v5p names count TensorCores (2 a chip); v5e / v6e count chips; v4 counts
# TensorCores but is compiled on half the chips, one device per TensorCore (module doc).
_GENERATIONS: dict[str, tuple[str, dict[int, str], int]] = {
    "v2": ("v2", _GRIDS_2D, 2), "v3": ("v3", _GRIDS_2D, 2), "v4": ("v4", _GRIDS_3D, 4),
    "v5p": ("v5p", _GRIDS_3D, 2), "v5e": ("v5e", _GRIDS_2D, 1),
    "v5litepod": ("v5e", _GRIDS_2D, 1), "v6e": ("v6e", _GRIDS_2D, 1)}
_SLICE_SIZES = {"v2": (8, 32, 128, 256, 512), "v3": (8, 32, 64, 128, 256, 512, 1024, 2048),
                "v4": (16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
                "v5p": (8, 16, 32, 64, 128, 256, 512, 1024, 2048),
                "v5e": (4, 8, 16, 32, 64, 128, 256), "v5litepod": (4, 8, 16, 32, 64, 128, 256),
                "v6e": (4, 8, 16, 32, 64, 128, 256)}


class PlanError(ValueError):
  """Bad plan arguments (one line, exit status 2)."""


def known_slices() -> str:
  """The slice names `libtpu_topology` knows, one group per generation."""
  return ", ".join(f"{g}-{{{','.join(map(str, sizes))}}}" for g, sizes in _SLICE_SIZES.items())


def libtpu_topology(name: str) -> str:
  """A TPU slice name -> libtpu's compile-only topology name.

  Args:
    name: a pod-slice name (`v3-32`, `v4-64`, `v5p-8`, `v5e-16` or `v5litepod-16`,
      `v6e-16`) or libtpu's own `vX:AxB[xC]`, which passes through.

  Returns:
    libtpu's name, e.g. `v3:4x4` for `v3-32` (16 chips, 32 cores) or `v4:2x2x4` for `v4-64`
    (32 devices, see the module docstring).

  Raises:
    PlanError: an unknown name; the message lists the known ones.
  """
  name = name.strip()
  if re.fullmatch(r"v[0-9][a-z]*:[0-9]+x[0-9]+(x[0-9]+)?", name):
    return name
  m = re.fullmatch(r"(v[0-9][a-z]*)-([0-9]+)", name)
  if m and m.group(1) in _GENERATIONS and int(m.group(2)) in _SLICE_SIZES[m.group(1)]:
    libtpu_name, grids, per_chip = _GENERATIONS[m.group(1)]
    return f"{libtpu_name}:{grids[int(m.group(2)) // per_chip]}"
  raise PlanError(f"--topology={name}: unknown TPU slice; known: {known_slices()}, or "
                  "libtpu's own vX:AxB[xC] (e.g. v3:4x4).")


def parse_bytes(text: str) -> int:
  """'16GiB', '12.5GB', '1000000' -> bytes."""
  m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
  if not m or m.group(2).upper() not in _UNITS:
    raise PlanError(f"--device_memory={text!r}: give bytes, e.g. 16GiB, 12.5GB or 17179869184.")
  return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="prompt-jax plan", description=__doc__.split("\n\n")[0])
  p.add_argument("--gin_file", action="append", default=[])
  p.add_argument("--gin_search_paths", default="")
  p.add_argument("--devices", type=int, default=8, help="emulated CPU devices")
  p.add_argument("--topology", default=None,
                  help="a TPU slice, e.g. v3-32, v4-64 (32 megacore devices), v5e-16, or "
                  "libtpu's v3:4x4; needs libtpu (optional: pip install libtpu)")
  p.add_argument("--device_memory", default="16GiB",
                 help="memory of one device (a v3 core 16GiB, a v4 chip 32GiB)")
  return p


def _emulate(devices: int) -> None:
  """Asks for `devices` CPU devices (only effective before the backend starts)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _target_devices(devices: int, topology: str | None) -> list[Any]:
  import jax
  if topology:
    name = libtpu_topology(topology)
    try:
      from jax.experimental import topologies
      desc = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as e:  # pylint: disable=broad-except  No libtpu, a shape it refuses, ...
      raise PlanError(f"--topology={topology}: no TPU topology {name} ({e}). Install libtpu "
                      f'(pip install "jax[tpu]=={jax.__version__}"), or plan on emulated CPU '
                      "devices with --devices=N.") from None
    return list(desc.devices)
  cpu = jax.devices("cpu")
  if len(cpu) < devices:
    raise PlanError(f"--devices={devices}: only {len(cpu)} CPU devices (the backend started "
                    "before the plan could ask for more); run `prompt-jax plan` in a fresh "
                    "process.")
  return cpu[:devices]


def _shape_only(module: Any) -> Any:
  """A prompt module whose pretrained-dependent initializers become shape-equal stand-ins."""
  from prompt_jax.prompts import initializers
  module = initializers.map_initializer_specs(module, lambda _: initializers.RandomUniform())
  if getattr(module, "num_tasks", None) == 0:
    module = module.clone(num_tasks=1)
  return module


def hlo_collectives(hlo: str) -> dict[str, dict[str, Any]]:
  """{op: {"count", "bytes", "largest_bytes", "largest"}} of HLO text's collectives.

  Sizes are the results'; "largest" is the largest one's result type, e.g. 'bf16[8,4096]'.
  """
  out: dict[str, dict[str, Any]] = {}
  pattern = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(_COLLECTIVES) + r")(-start)?\(")
  for line in hlo.splitlines():
    m = pattern.search(line)
    if not m:
      continue
    size = 0
    for dtype, dims in re.findall(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]", m.group(1)):
      if dtype in _DTYPE_BYTES:
        n = 1
        for d in filter(None, dims.split(",")):
          n *= int(d)
        size += n * _DTYPE_BYTES[dtype]
    entry = out.setdefault(m.group(2),
                           {"count": 0, "bytes": 0, "largest_bytes": 0, "largest": ""})
    entry["count"] += 1
    entry["bytes"] += size
    if size > entry["largest_bytes"] or not entry["largest"]:
      entry["largest_bytes"] = size
      entry["largest"] = re.sub(r"\{[^}]*\}", "", m.group(1)).strip()
  return out


def plan(devices: Sequence[Any], device_memory: int) -> dict[str, Any]:
  """Compiles the gin-configured train step for `devices`; returns the figures."""
  import gin
  import jax
  import jax.numpy as jnp
  from prompt_jax import runs
  from prompt_jax.models import T5Config, T5Transformer
  from prompt_jax.train import adapter as adapter_lib
  from prompt_jax.train import builder, partitioning
  settings = gin.get_bindings("train")
  lengths = settings.get("task_feature_lengths", {"inputs": 512, "targets": 8})
  batch_size = settings.get("batch_size", 32)
  num_partitions = settings.get("num_partitions", 1)
  precision = runs.precision()
  try:
    config = T5Config(**runs.architecture(), dtype=precision["dtype"])
  except (TypeError, ValueError) as e:
    raise PlanError(f"The model's architecture from the gin files: {e}") from None
  if len(devices) % num_partitions or batch_size % (len(devices) // num_partitions):
    raise PlanError(f"NUM_PARTITIONS={num_partitions} and BATCH_SIZE={batch_size} do not fit "
                    f"{len(devices)} devices (partitions must divide them, the batch the "
                    "data-parallel size).")
  prompt = _shape_only(settings.get("prompt"))
  groups = settings.get("param_groups") or runs.default_param_groups(prompt)
  adapter = adapter_lib.ModelAdapter(T5Transformer(config, prompt=prompt),
                                     loss_terms=tuple(settings.get("loss_terms", ())))
  mesh = partitioning.make_mesh(num_partitions, devices)
  setup = builder.build(adapter, groups, mesh)
  param_dtype = jnp.dtype(precision["param_dtype"])
  frozen = jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, param_dtype, sharding=sh),
      setup.abstract_frozen, setup.frozen_sharding)
  shapes = {"encoder_input_tokens": (batch_size, lengths["inputs"]),
            "decoder_input_tokens": (batch_size, lengths["targets"]),
            "decoder_target_tokens": (batch_size, lengths["targets"]),
            "decoder_loss_weights": (batch_size, lengths["targets"]),
            "task_ids": (batch_size,)}
  batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=setup.batch_sharding)
           for k, v in shapes.items()}
  compiled = setup.step_fn.lower(setup.abstract_state(setup.abstract_trainable), frozen,
                                 batch).compile()
  mem = compiled.memory_analysis()
  args, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
  alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
  peak = args + out - alias + temp
  collectives = hlo_collectives(compiled.as_text())
  return {"per_device_peak_bytes": peak, "device_memory_bytes": device_memory,
          "fits": peak <= device_memory, "argument_bytes": args, "output_bytes": out,
          "alias_bytes": alias, "temp_bytes": temp,
          "platform": devices[0].platform, "devices": len(devices),
          "mesh": {"data": mesh.shape["data"], "model": mesh.shape["model"]},
          "batch_size": batch_size, "feature_lengths": dict(lengths),
          "param_dtype": precision["param_dtype"], "activation_dtype": precision["dtype"],
          "collectives": collectives,
          "largest_collective_bytes": max([c["largest_bytes"] for c in collectives.values()],
                                          default=0)}


def _gib(n: int) -> str:
  return f"{n / 2**30:.3f} GiB"


def format_table(result: dict[str, Any]) -> str:
  rows = [("devices", f"{result['devices']} {result['platform']}, mesh data="
           f"{result['mesh']['data']} model={result['mesh']['model']}"),
          ("arguments / device", _gib(result["argument_bytes"])),
          ("outputs / device", _gib(result["output_bytes"])),
          ("aliased (donated)", _gib(result["alias_bytes"])),
          ("temporaries / device", _gib(result["temp_bytes"])),
          ("peak / device", _gib(result["per_device_peak_bytes"])),
          ("device memory", _gib(result["device_memory_bytes"])),
          ("fits", "yes" if result["fits"] else "NO")]
  for op, c in sorted(result["collectives"].items()):
    rows.append((f"{op}", f"{c['count']} ops, {c['bytes'] / 2**20:.2f} MiB in all, largest "
                 f"{c['largest_bytes'] / 2**20:.2f} MiB ({c['largest']})"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
  from prompt_jax import cli
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    bindings, rest = cli._split_gin_flags(argv)  # pylint: disable=protected-access
    args = _parser().parse_args(rest)
    if not args.gin_file:
      raise PlanError("`prompt-jax plan` needs the run's --gin_file flags (as for train).")
    if args.devices < 1:
      raise PlanError(f"--devices={args.devices} must be positive.")
    memory = parse_bytes(args.device_memory)
    if not args.topology:
      _emulate(args.devices)
    set_names = {b.split("=", 1)[0].strip() for b in bindings}
    bindings = [f"{k} = {v}" for k, v in _PLACEHOLDERS.items() if k not in set_names] + bindings
    cli.parse_gin(args.gin_file, bindings, args.gin_search_paths)
    result = plan(_target_devices(args.devices, args.topology), memory)
  except (PlanError, cli.CliError) as e:
    print(f"prompt-jax plan: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except  Known user errors: one line.
    from prompt_jax import runs
    if isinstance(e, runs.UserError):
      print(f"prompt-jax plan: error: {e}", file=sys.stderr)
      return 2
    raise
  print(format_table(result))
  print(json.dumps(result, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
