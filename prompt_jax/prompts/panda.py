"""PANDA-style knowledge-distillation prompt transfer (after Zhong et al., 2022).

PANDA trains a fresh target prompt (the student) with the target's cross-entropy plus a
distillation term towards a frozen teacher, the source prompt after vanilla prompt transfer
(PoT) on the target:

    L = CE(y, z_s) + lambda * MSE(z_s, z_t)

What is PANDA's and what is our port (METHODS.md §4):

* PANDA's (exact in the authors' code, BERT + P-Tuning v2): the MSE on the logits between
  student and teacher, no temperature, no KL; the teacher is the PoT checkpoint of that
  source -> target pair, frozen; the coefficient in their code is `0.1 * beta / B` on a
  mean-reduced MSE (B = batch size), i.e. `L = CE + 0.1 * beta * MSE / B`
  (`paper_scaling=True` below reproduces that factor).
* Ours (T5 port with input prompts): the logits are the decoder's at the target positions
  (`decoder_loss_weights > 0`), over the full vocabulary or only the task's label tokens
  (`label_token_ids`); the MSE is the mean over those columns and positions; the teacher
  and the student share the frozen backbone in one jitted step (one extra forward pass, no
  second copy of the weights); `lambda` is fixed (`weight`) or, since PANDA's metric ->
  weight formula is not public, `lambda = beta * max(s(S, T), 0)` with s the transferability metric
  (`prompt-jax transferability`, `prompt_jax.prompts.similarity`).

The pieces on the library's seam:

* `TeacherPrompt`: a plain `Prompt` (the student, parameter `prompt/prompt`, what export and
  evaluation use) that also holds the teacher's table as `prompt/teacher`, initialised
  from the teacher's file or run dir and frozen by `param_groups()`;
* `KDLoss`: the distillation term, a `LossTerm` for `ModelAdapter.loss_terms`, whose teacher
  forward is `LossContext.forward` with the teacher's table in the student's place.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax.prompts import initializers
from prompt_jax.prompts.lester import PROMPT_AXES, Prompt
from prompt_jax.train import optimizer as opt_lib

Array = jax.Array
TEACHER = "teacher"  # The teacher's parameter name inside the prompt subtree.


class PandaError(ValueError):
  """A PANDA setting the user can fix (bad lambda, missing similarity, bad label ids)."""


class TeacherPrompt(Prompt):
  """The student prompt [P, D] plus a frozen teacher prompt [P, D] under `prompt/teacher`.

  The encoder sees only the student (`prompt()` returns it), so export, evaluation and
  the PEFT adapter are those of a plain `Prompt`. Freeze the teacher with `param_groups()`.

  Attributes:
    teacher_initializer: where the teacher comes from, e.g. `initializers.FromRun(dir)` (the
      PoT run of this source -> target pair) or `initializers.FromFile(path)`.
  """
  teacher_initializer: initializers.Initializer = initializers.FromFile()

  @nn.compact
  def prompt(self, d_model: int) -> Array:
    # The student first: it then draws the same init key as a plain `Prompt`'s.
    student = self.param("prompt", nn.with_logical_partitioning(self.initializer, PROMPT_AXES),
                         (self.length, d_model))
    self.param(TEACHER, nn.with_logical_partitioning(self.teacher_initializer, PROMPT_AXES),
               (self.length, d_model))
    return student


def param_groups(learning_rate: float | None = None) -> opt_lib.ParamGroups:
  """The student trains (one group), the teacher and the backbone are frozen.

  `learning_rate=None` takes `optim.OptimizerConfig`'s (so LEARNING_RATE applies).
  """
  from prompt_jax import configurables  # Local: configurables imports this module.
  cfg = configurables.OptimizerConfig()
  if learning_rate is not None:
    cfg = dataclasses.replace(cfg, learning_rate=learning_rate)
  return opt_lib.ParamGroups(
      ((rf"^prompt/{TEACHER}$", opt_lib.FROZEN), (r"^prompt/", opt_lib.TRAINABLE),
       (r"^(token_embedder|encoder|decoder)/", opt_lib.FROZEN)),
      {opt_lib.TRAINABLE: cfg})


def kd_mse(student: Array, teacher: Array, weights: Array,
           label_token_ids: Sequence[int] = ()) -> Array:
  """Mean squared logit difference over the target positions (and the chosen vocab columns).

  Args:
    student / teacher: [B, T, V] logits.
    weights: [B, T] loss weights (0 on padding): the target positions.
    label_token_ids: restrict to these vocabulary columns (empty: the full vocabulary).

  Returns:
    sum_{b,t} w_bt * mean_v (z_s - z_t)^2 / sum_{b,t} w_bt (a float32 scalar).
  """
  if student.shape != teacher.shape or student.shape[:2] != weights.shape:
    raise ValueError(f"Shape mismatch: student {student.shape}, teacher {teacher.shape}, "
                     f"weights {weights.shape}.")
  diff = student.astype(jnp.float32) - teacher.astype(jnp.float32)
  if label_token_ids:
    diff = jnp.take(diff, jnp.asarray(label_token_ids, jnp.int32), axis=-1)
  per_position = jnp.mean(jnp.square(diff), axis=-1)  # [B, T]
  w = weights.astype(jnp.float32)
  return jnp.sum(per_position * w) / jnp.maximum(jnp.sum(w), 1.0)


def read_similarity(csv_path: str | pathlib.Path, source: str, target: str) -> float:
  """s(source, target) from a `prompt-jax transferability` matrix CSV (rows: sources)."""
  path = pathlib.Path(csv_path)
  if not path.is_file():
    raise FileNotFoundError(f"Similarity matrix {path} does not exist; write it with "
                            "`prompt-jax transferability ...`.")
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  header, body = rows[0], {row[0]: row[1:] for row in rows[1:]}
  if target not in header[1:] or source not in body:
    raise PandaError(f"{path} has no entry for source {source!r} x target {target!r} "
                     f"(sources: {sorted(body)}, targets: {header[1:]}).")
  return float(body[source][header.index(target) - 1])


@dataclasses.dataclass(frozen=True)
class KDLoss:
  """The distillation term `lambda * MSE(student logits, teacher logits)`, a `LossTerm`.

  Attributes:
    weight: a fixed lambda (None: from the metric, `beta * max(s(S, T), 0)`).
    beta: the scale of the metric-controlled lambda (PANDA's code: a flag, default 0.1).
    similarity: s(S, T) for this pair; or give `similarity_csv` with `source` and `target`.
    similarity_csv / source / target: a `prompt-jax transferability` matrix and the entry.
    label_token_ids: restrict the MSE to these vocabulary columns (empty: full vocabulary).
    paper_scaling: multiply by PANDA's code's `0.1 / B` (B = the batch's example count).
    teacher_param: the teacher's table in the prompt subtree, swapped in for `prompt`.
  """
  weight: float | None = None
  beta: float = 0.1
  similarity: float | None = None
  similarity_csv: str | None = None
  source: str | None = None
  target: str | None = None
  label_token_ids: tuple[int, ...] = ()
  paper_scaling: bool = False
  teacher_param: str = TEACHER

  def __post_init__(self):
    self.lam()  # Fails at configuration time, before any model is loaded.
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0
           for i in self.label_token_ids):
      raise PandaError(f"KDLoss.label_token_ids must be vocabulary ids (ints >= 0), got "
                       f"{self.label_token_ids!r}.")

  def lam(self) -> float:
    """lambda: `weight`, else `beta * max(s(S, T), 0)`."""
    if self.weight is not None:
      if self.weight < 0:
        raise PandaError(f"KDLoss.weight (lambda) must be >= 0, got {self.weight}.")
      return float(self.weight)
    s = self.similarity
    if s is None and self.similarity_csv:
      if not (self.source and self.target):
        raise PandaError("KDLoss.similarity_csv needs KDLoss.source and KDLoss.target "
                         "(the matrix entry of this pair).")
      s = read_similarity(self.similarity_csv, self.source, self.target)
    if s is None:
      raise PandaError("KDLoss needs a fixed lambda (PANDA_LAMBDA=...) or the pair's "
                       "transferability s(S, T) (PANDA_SIMILARITY=... or "
                       "PANDA_SIMILARITY_CSV with PANDA_SOURCE / PANDA_TARGET).")
    # A cosine can be negative; a negative lambda would push the student away from the
    # teacher (the skill gym showed it collapsing), so an unrelated pair gets no KD.
    return float(self.beta) * max(float(s), 0.0)

  def teacher_params(self, params: Any) -> Any:
    """The parameter tree with the teacher's table in the student's place (no gradient)."""
    prompt = dict(params["prompt"])
    if self.teacher_param not in prompt:
      raise PandaError(f"KDLoss found no teacher prompt/{self.teacher_param}: use "
                       "prompts.TeacherPrompt (gin/methods/panda.gin).")
    prompt["prompt"] = jax.lax.stop_gradient(prompt[self.teacher_param])
    return {**params, "prompt": prompt}

  def __call__(self, ctx) -> Array:
    teacher = jax.lax.stop_gradient(ctx.forward(self.teacher_params(ctx.params)))
    mse = kd_mse(ctx.logits, teacher, ctx.batch["decoder_loss_weights"],
                 self.label_token_ids)
    scale = self.lam()
    if self.paper_scaling:
      scale = scale * 0.1 / ctx.logits.shape[0]
    return scale * mse


def kd_loss_terms(kd: KDLoss) -> tuple[tuple[str, KDLoss], ...]:
  """`train.loss_terms` for gin: the term is reported as `loss/kd`."""
  return (("kd", kd),)
