"""IPT (Qin et al., 2021/2024): the intrinsic task subspace of soft prompts, on T5.

Shape letters: B batch, T tasks, P prompt length, D d_model, I the intrinsic dimension d_I.

The autoencoder is fixed by the authors' code (`AE_type=1`); we follow it exactly:

    Proj   : flatten(P) [P*D] -> [I]              one linear map
    Proj_b : [I] -> [D] -> tanh -> [P*D] -> [P, D] two linear maps
    init   : PyTorch's Linear default: kernel kaiming_uniform(a=sqrt(5)), i.e.
             U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))

Three stages, three modules on the prompt seam (gin/methods/ipt_msf.gin, ipt_ist.gin,
ipt_pt.gin):

* **MSF** (`MSFPrompt`): the stage-0 prompts [T, P, D] sit in the frozen parameter
  `prompt/bank` (read from per-task `.npy` files, run dirs or a stage-0 manifest by
  `StageZeroBank`, on every start, so they are never saved and never change); the
  autoencoder `prompt/proj`, `prompt/proj_b/{hidden,out}` trains. Each example takes its
  task's stage-0 prompt by its task id and the encoder sees its reconstruction
  `P* = Proj_b(Proj(P))`. The reconstruction term `alpha * mean((P* - P)^2)` (alpha 200;
  the mean over the batch's examples, rows and features) is sown into the `losses`
  collection, so the adapter adds it and reports it as `loss/prompt/reconstruction`. The
  run exports the reconstructions ([T, P, D] and one `prompts/<task>/prompt_<step>.npy`
  each) and Proj_b (`prompts/ipt_proj_b_*_<step>.npy`, what IST reads).
* **IST** (`ISTPrompt`): `prompt/v` [I] (N(0, 0.02)) trains, Proj_b is frozen and read from
  an MSF run (`ProjBFromRun`); prompt = Proj_b(v). With `per_task=True`, v is [T, I] and
  each example takes its task's row (one run tunes every task of a mixture; our addition).
  The exported prompt `prompts/prompt_<step>.npy` is Proj_b(v*), a plain [P, D] prompt.
* **IPT -> PT**: a plain `Prompt` whose initializer is `FromISTRun` (that export).

Which parameters train is `msf_param_rules` / `ist_param_rules` (tested Python).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.prompts import combine as combine_lib
from prompt_jax.prompts import initializers
from prompt_jax.train import optimizer as opt_lib

Array = jax.Array
ALPHA = 200.0  # The authors' weight of the reconstruction term.
V_STDDEV = 0.02  # IST's init of v.
# Proj_b's parameters (paths under `proj_b/`) and the names they are exported under.
PROJ_B_LEAVES = ("hidden/kernel", "hidden/bias", "out/kernel", "out/bias")
PROJ_B_EXPORTS = {leaf: "ipt_proj_b_" + leaf.replace("/", "_") for leaf in PROJ_B_LEAVES}
MANIFEST_NAME = "stage0.json"  # What the stage-0 driver writes (see studies/ipt_stage0.py).


def torch_linear_uniform(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch.nn.Linear's default weight and bias init.

  (kaiming_uniform_(a=sqrt(5)) has gain sqrt(2 / 6) and bound gain * sqrt(3 / fan_in),
  which is 1 / sqrt(fan_in); the bias uses the same bound.)
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)

  return init


class TorchLinear(nn.Module):
  """y = x W + b with W [in, out] (torch's weight transposed), torch's default init.

  `source`, when set, is a `(leaf_name, shape) -> array` callable that supplies the values
  (a frozen layer read from another run) instead of the random init.
  """
  features: int
  source: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    init = torch_linear_uniform(fan_in)
    if self.source is None:
      k_init = b_init = init
    else:
      k_init = lambda key, shape, dtype=jnp.float32: self.source("kernel", shape)
      b_init = lambda key, shape, dtype=jnp.float32: self.source("bias", shape)
    kernel = self.param("kernel", k_init, (fan_in, self.features))
    bias = self.param("bias", b_init, (self.features,))
    y = jnp.einsum("...i,io->...o", x, kernel, precision="highest")
    return y + jnp.broadcast_to(bias, y.shape)  # Explicit: tests raise on rank promotion.


class ProjB(nn.Module):
  """Proj_b: [..., I] -> linear -> [..., D] -> tanh -> linear -> [..., P*D] -> [..., P, D].

  `source`: a `ProjBFromRun`-like object with `array(leaf, shape)`; None: torch init.
  """
  length: int
  source: Any = None

  @nn.compact
  def __call__(self, v: Array, d_model: int) -> Array:
    src = (lambda layer: None) if self.source is None else (
        lambda layer: lambda kind, shape: self.source.array(f"{layer}/{kind}", shape))
    h = jnp.tanh(TorchLinear(d_model, src("hidden"), name="hidden")(v))  # [..., D]
    out = TorchLinear(self.length * d_model, src("out"), name="out")(h)  # [..., P*D]
    return out.reshape(*v.shape[:-1], self.length, d_model)


def reconstruction_loss(reconstructed: Array, original: Array, alpha: float = ALPHA) -> Array:
  """alpha * mean((P* - P)^2) over every element."""
  return alpha * jnp.mean(jnp.square(reconstructed - original))


# ---------------------------------------------------------------------------------------
# Where the frozen arrays come from.


class IPTSourceError(ValueError):
  """A stage-0 bank or MSF run that cannot be read (the message says what and how to fix)."""


def _latest_step_file(prompts_dir: pathlib.Path, stem: str) -> pathlib.Path:
  """`<prompts_dir>/<stem>_<largest int step>.npy`."""
  steps = [int(m.group(1)) for p in prompts_dir.glob(f"{stem}_*.npy")
           if (m := re.fullmatch(re.escape(stem) + r"_(\d+)\.npy", p.name))]
  if not steps:
    raise IPTSourceError(f"No {stem}_<step>.npy in {prompts_dir}; is it a finished run dir?")
  return prompts_dir / f"{stem}_{max(steps)}.npy"


def resolve_prompt_file(entry: str | pathlib.Path, step: str = "latest") -> pathlib.Path:
  """A `.npy` file, or a run dir -> its `prompts/prompt_<step>.npy` ("latest": largest)."""
  path = pathlib.Path(entry)
  if path.is_dir():
    prompts = path / "prompts" if (path / "prompts").is_dir() else path
    if step == "latest":
      return _latest_step_file(prompts, "prompt")
    path = prompts / f"prompt_{step}.npy"
  if not path.exists():
    raise IPTSourceError(f"Stage-0 prompt {path} does not exist.")
  return path


def _load(path: pathlib.Path, what: str) -> np.ndarray:
  try:
    return initializers.load_npy_prompt(path)
  except (FileNotFoundError, initializers.PromptFileError) as e:
    raise IPTSourceError(f"{what}: {e}") from None


@dataclasses.dataclass(frozen=True)
class StageZeroBank:
  """The stage-0 prompts MSF reads: [T, P, D] in task-id order.

  Give either `files` (per-task `.npy` files or run dirs, in task-id order, i.e. the
  mixture's sorted task names) or `manifest` (a stage-0 driver's `stage0.json`,
  {"prompts": {task name: file}}; matched to the run's task names by name).
  """
  files: tuple[str, ...] = ()
  manifest: str = ""
  step: str = "latest"

  def paths(self, task_names: Sequence[str] = ()) -> list[pathlib.Path]:
    if bool(self.files) == bool(self.manifest):
      raise IPTSourceError("StageZeroBank needs exactly one of `files` (per-task .npy files "
                           "or run dirs) and `manifest` (a stage-0 driver's stage0.json); "
                           "set IPT_BANK_MANIFEST or IPT_BANK_FILES.")
    if self.files:
      return [resolve_prompt_file(f, self.step) for f in self.files]
    path = pathlib.Path(self.manifest)
    if not path.is_file():
      raise IPTSourceError(f"Stage-0 manifest {path} does not exist (the stage-0 driver "
                           f"writes <out>/{MANIFEST_NAME}).")
    table = json.loads(path.read_text())["prompts"]
    names = list(task_names) or sorted(table)
    missing = [n for n in names if n not in table]
    if missing:
      raise IPTSourceError(f"Stage-0 manifest {path} has no prompt for task(s) "
                           f"{missing[:5]} of this mixture; run stage 0 for them, or use a "
                           "mixture of the manifest's tasks.")
    return [resolve_prompt_file(path.parent / table[n]) for n in names]

  def load(self, shape: Sequence[int], task_names: Sequence[str] = ()) -> np.ndarray:
    """The bank [T, P, D] (float32); its shape must be `shape`."""
    paths = self.paths(task_names)
    rows = [_load(p, "Stage-0 prompt") for p in paths]
    bad = [(str(p), r.shape) for p, r in zip(paths, rows) if r.shape != tuple(shape[1:])]
    if len(rows) != shape[0] or bad:
      raise IPTSourceError(f"The MSF bank must be {tuple(shape)} (tasks x PROMPT_LENGTH x "
                           f"d_model); got {len(rows)} prompt(s), mismatched: {bad[:3]}.")
    return np.stack(rows).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ProjBFromRun:
  """Proj_b as an MSF run exported it (`prompts/ipt_proj_b_*_<step>.npy`)."""
  run_dir: str = ""
  step: str = "latest"

  def _path(self, leaf: str) -> pathlib.Path:
    if not self.run_dir:
      raise IPTSourceError("ProjBFromRun needs the MSF run dir (IPT_MSF_RUN=...).")
    prompts = pathlib.Path(self.run_dir) / "prompts"
    stem = PROJ_B_EXPORTS[leaf]
    if self.step == "latest":
      return _latest_step_file(prompts, stem)
    return prompts / f"{stem}_{self.step}.npy"

  def array(self, leaf: str, shape: Sequence[int]) -> np.ndarray:
    path = self._path(leaf)
    if not path.is_file():
      raise IPTSourceError(f"MSF export {path} does not exist; IPT_MSF_RUN must be a "
                           "finished MSF run dir (methods/ipt_msf.gin).")
    array = np.load(path, allow_pickle=False)
    if array.shape != tuple(shape) or not np.issubdtype(array.dtype, np.floating):
      raise IPTSourceError(f"MSF export {path} is {array.shape} {array.dtype}; this IST run "
                           f"needs {tuple(shape)} float (same PROMPT_LENGTH, IPT_DIM and "
                           "d_model as the MSF run).")
    return jnp.asarray(array, jnp.float32)


@dataclasses.dataclass(frozen=True)
class FromISTRun:
  """IPT -> PT: a plain prompt initialised with an IST run's exported Proj_b(v*).

  `task`: for a per-task IST run, the task whose row to take (`prompts/<task>/...`).
  """
  run_dir: str = ""
  step: str = "latest"
  task: str = ""

  def __call__(self, key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    del key
    if not self.run_dir:
      raise IPTSourceError("FromISTRun needs the IST run dir (IPT_IST_RUN=...).")
    root = pathlib.Path(self.run_dir) / "prompts"
    path = resolve_prompt_file(root / self.task if self.task else root, self.step)
    array = _load(path, "IST export")
    if array.shape != tuple(shape):
      raise IPTSourceError(f"IST export {path} is {array.shape}, the prompt is "
                           f"{tuple(shape)} (PROMPT_LENGTH x d_model).")
    return jnp.asarray(array, dtype)

  def init_bank(self, key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    """A `PromptBank` [T, P, D] from a per-task IST run's [T, P, D] export (row t = task t)."""
    if self.task:
      raise IPTSourceError("FromISTRun.task picks one row for a plain Prompt; a PromptBank "
                           "takes every row: leave IPT_IST_TASK empty.")
    return self(key, shape, dtype)


# ---------------------------------------------------------------------------------------
# The modules.


class MSFPrompt(nn.Module):
  """Multi-task subspace finding: a frozen stage-0 bank, a trainable autoencoder.

  Attributes:
    num_tasks: T (0: the mixture's task count, filled in by the run builder).
    length: P.
    intrinsic_dim: I = d_I.
    bank: a `StageZeroBank` (or any `(shape, task_names) -> [T, P, D]` loader).
    alpha: weight of the reconstruction term.
    task_names: the run's task names in task-id order (filled in by the run builder; a
      manifest bank is matched to them by name).
  """
  num_tasks: int = 0
  length: int = 100
  intrinsic_dim: int = 250
  bank: Any = StageZeroBank()
  alpha: float = ALPHA
  task_names: tuple[str, ...] = ()
  placement: str = "prefix"
  eos_id: int = 1

  PEFT_EXPORTABLE = True  # Each task's reconstruction is a plain [P, D] prompt.

  @nn.compact
  def _rows(self, d_model: int, task_ids: Array | None) -> tuple[Array, Array]:
    """(stage-0 prompts, their reconstructions): [T, P, D] each, or [B, P, D] by task id."""
    shape = (self.num_tasks, self.length, d_model)
    bank = self.param("bank", lambda key, s: jnp.asarray(self.bank.load(s, self.task_names)),
                      shape)
    rows = bank if task_ids is None else jnp.take(bank, task_ids, axis=0)
    flat = rows.reshape(rows.shape[0], self.length * d_model)  # [N, P*D]
    z = TorchLinear(self.intrinsic_dim, name="proj")(flat)  # [N, I]
    return rows, ProjB(self.length, name="proj_b")(z, d_model)

  def prompt(self, d_model: int) -> Array:
    """The reconstructed prompts of every task [T, P, D] (row t serves task id t)."""
    return self._rows(d_model, None)[1]

  def exports(self, d_model: int) -> dict[str, Array]:
    """Proj_b's four arrays (what an IST run reads)."""
    self._rows(d_model, None)
    flat = {f"{k}/{kind}": v for k, layer in self.variables["params"]["proj_b"].items()
            for kind, v in layer.items()}
    return {PROJ_B_EXPORTS[leaf]: flat[leaf] for leaf in PROJ_B_LEAVES}

  def __call__(self, embedded: Array, tokens: Array, mask: Array, *,
               task_ids: Array | None = None, deterministic: bool = True
               ) -> tuple[Array, Array]:
    del deterministic
    if task_ids is None:
      raise ValueError("MSFPrompt needs `task_ids` [B] (a task_ids feature in the batch).")
    original, rec = self._rows(embedded.shape[-1], task_ids)  # [B, P, D] each
    self.sow("losses", "reconstruction", reconstruction_loss(rec, original, self.alpha))
    return combine_lib.combine(self.placement, rec, embedded, tokens, mask, self.eos_id)


class ISTPrompt(nn.Module):
  """Intrinsic subspace tuning: prompt = Proj_b(v), only v [I] (or [T, I]) trains.

  Attributes:
    length: P (the MSF run's).
    intrinsic_dim: I = d_I (the MSF run's).
    proj_b: a `ProjBFromRun` (None: torch's random init, for tests only).
    per_task: v is [T, I], one row per task of the mixture (task ids pick the row).
    num_tasks: T when `per_task` (0: the mixture's, filled in by the run builder).
    v_stddev: v's init, N(0, v_stddev).
  """
  length: int = 100
  intrinsic_dim: int = 250
  proj_b: Any = None
  per_task: bool = False
  num_tasks: int = 0
  v_stddev: float = V_STDDEV
  placement: str = "prefix"
  eos_id: int = 1

  PEFT_EXPORTABLE = True  # The exported Proj_b(v*) is a plain [P, D] prompt.

  @nn.compact
  def prompt(self, d_model: int) -> Array:
    """Proj_b(v): [P, D], or [T, P, D] per task."""
    shape = (self.num_tasks, self.intrinsic_dim) if self.per_task else (self.intrinsic_dim,)
    v = self.param("v", nn.initializers.normal(self.v_stddev), shape)
    if self.is_initializing():
      logging.info("IST: %s trainable parameter(s) v %s; Proj_b (%s) frozen.",
                   f"{int(np.prod(shape)):,}", shape,
                   "from " + str(getattr(self.proj_b, "run_dir", "")) if self.proj_b
                   else "random init")
    return ProjB(self.length, self.proj_b, name="proj_b")(v, d_model)

  def __call__(self, embedded: Array, tokens: Array, mask: Array, *,
               task_ids: Array | None = None, deterministic: bool = True
               ) -> tuple[Array, Array]:
    del deterministic
    p = self.prompt(embedded.shape[-1])
    if self.per_task:
      if task_ids is None:
        raise ValueError("A per-task ISTPrompt needs `task_ids` [B] in the batch.")
      p = jnp.take(p, task_ids, axis=0)  # [B, P, D]
    return combine_lib.combine(self.placement, p, embedded, tokens, mask, self.eos_id)


# ---------------------------------------------------------------------------------------
# Parameter groups (which paths train: kept in Python, tested).


_MODEL = (r"^(token_embedder|encoder|decoder)/", opt_lib.FROZEN)


def msf_param_rules() -> opt_lib.Rules:
  """MSF: the autoencoder trains; the stage-0 bank and the model are frozen."""
  return ((r"^prompt/bank$", opt_lib.FROZEN), (r"^prompt/(proj|proj_b)/", opt_lib.TRAINABLE),
          _MODEL)


def ist_param_rules() -> opt_lib.Rules:
  """IST: only v trains; Proj_b and the model are frozen."""
  return ((r"^prompt/v$", opt_lib.TRAINABLE), (r"^prompt/proj_b/", opt_lib.FROZEN), _MODEL)


def msf_param_groups(config: opt_lib.OptimizerConfig | None = None) -> opt_lib.ParamGroups:
  return opt_lib.ParamGroups(msf_param_rules(),
                             {opt_lib.TRAINABLE: config or opt_lib.OptimizerConfig()})


def ist_param_groups(config: opt_lib.OptimizerConfig | None = None) -> opt_lib.ParamGroups:
  return opt_lib.ParamGroups(ist_param_rules(),
                             {opt_lib.TRAINABLE: config or opt_lib.OptimizerConfig()})


def pt_param_groups(config: opt_lib.OptimizerConfig | None = None) -> opt_lib.ParamGroups:
  """IPT -> PT: plain prompt tuning (the prompt trains) with one optimizer setting."""
  return opt_lib.ParamGroups(opt_lib.PROMPT_TUNING_RULES,
                             {opt_lib.TRAINABLE: config or opt_lib.OptimizerConfig()})

