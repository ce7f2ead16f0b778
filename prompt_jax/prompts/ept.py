"""EPT-style efficient prompt tuning: DePT's decomposition, prompt fusion, multi-space projection.

Lan et al. (AAAI 2025) shorten the prompt and move the rest of its parameter budget into two
low-rank matrices that update the input embeddings (DePT's decomposition), enrich the short
prompt from those matrices by attention ("prompt fusion") and project it into several
subspaces mixed by a gate ("multi-space projection"). Their equations and code are not
public, so this module is "EPT-style": which parts are whose is said at each part.

Shape letters: B batch, L input length, D d_model, S short prompt length (s), R rank (r),
M max input length (L_max), A fusion attention width, K subspaces, Q subspace rank.

* **Decomposition (DePT-exact).** A short prompt `P_s` [S, D], `A` [M, R] (Kaiming-uniform,
  torch's default for a LoRA `A`: U[-1/sqrt(R), 1/sqrt(R)]) and `B` [R, D] (zeros). The
  embedded inputs get `(alpha / sqrt(R)) * (A @ B)[:L]` at their own positions; padding
  positions are left untouched (bitwise). Inputs longer than M are cut to M (DePT's tokenizer
  truncates to its max length); shorter ones use the first L rows, which equals padding them
  to M (padding is masked). At init B = 0: the module is exactly a plain S-token prompt.
* **Prompt fusion (our design from the abstract).**
  `P_f = P_s + softmax((P_s Wq)(Mem Wk)^T / sqrt(A)) (Mem Wv) Wo`, `Mem` = the rows of `B`
  (`fusion_memory="B"`) or of the scaled offset `A @ B` ("AB"). The value path is factorised
  through the attention width A (`Wv` [D, A], `Wo` [A, D]) so fusion costs 4·D·A parameters,
  not 3·D²; hence the scale 1/sqrt(A) (the width of the dot products), not 1/sqrt(D).
  Identity at init: `Wo` = 0 (and B = 0 makes Mem = 0 anyway).
* **Multi-space projection (our design from the abstract).** K subspace maps `W_k`, gate
  `g = softmax(mean_rows(P_f) Wg)` [K] (`gate=False`: g = 1/K), `P* = sum_k g_k P_f W_k`
  (+ `P_f` with `projection_residual`). `subspace_rank=Q > 0`: `W_k = U_k V_k` with `U_k`
  [D, Q] random and `V_k` [Q, D] zeros, residual required (identity at init; distinct `U_k`
  break the symmetry between subspaces). `subspace_rank=0`: full [D, D] maps, initialised to
  the identity with the residual off (identity at init up to the gate's sum, 1 within
  float32 rounding) or to zeros with it on. The gate is sown as the diagnostic `prompt/projection/gate` (reported per step
  as `diag/prompt/projection/gate/<k>` in metrics.jsonl), so it can be plotted per task.

Every part is a switch: `fusion=False` creates no `fusion/` parameters, `num_subspaces=0` no
`projection/`; DePT, DePT + fusion, DePT + multi-space and EPT-style are four gin files in
`gin/methods/`. `rank=0` picks R from `budget_length` (`budget_rank`), so the trainable count
equals a plain `budget_length`-token prompt's; start-up logs both counts.

Export: `prompt(d_model)` is the effective short prompt `P*` [S, D]; `exports(d_model)`
adds `input_offset` [M, D] (the scaled `A @ B`). `OffsetPrompt` (a plain prompt plus a fixed
input offset) rebuilt from the two `.npy` files reproduces the run (`prompt-jax eval` with
PROMPT_FILE and OFFSET_FILE). PEFT has no such method, so no PEFT adapter is written.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax.prompts import combine as combine_lib
from prompt_jax.prompts import initializers
from prompt_jax.prompts.lester import PROMPT_AXES
from prompt_jax.train import optimizer as opt_lib

Array = jax.Array
FUSION_MEMORIES = ("B", "AB")
OFFSET_EXPORT = "input_offset"  # exports() key: written as prompts/input_offset_<step>.npy.
PEFT_REASON = ("PEFT has no EPT-style / DePT method: besides the [S, D] prompt this run adds "
               "a learned offset to the input embeddings (prompts/input_offset_<step>.npy), "
               "which a PEFT prompt-tuning adapter cannot hold. Evaluate it with prompt-jax "
               "eval and both files (PROMPT_FILE and OFFSET_FILE) instead.")


def kaiming_uniform_a(key: Array, shape, dtype=jnp.float32) -> Array:
  """torch's `kaiming_uniform_(a=sqrt(5))` on [M, R] (fan_in R): U[-1/sqrt(R), 1/sqrt(R)]."""
  bound = 1.0 / math.sqrt(shape[-1])
  return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)


def fusion_param_count(d_model: int, fusion_dim: int) -> int:
  """Wq, Wk, Wv [D, A] and Wo [A, D]."""
  return 4 * d_model * fusion_dim


def projection_param_count(d_model: int, num_subspaces: int, subspace_rank: int,
                           gate: bool) -> int:
  """Subspace maps (K [D, D], or K x ([D, Q] + [Q, D])) plus the gate Wg [D, K]."""
  if num_subspaces == 0:
    return 0
  per = d_model * d_model if subspace_rank == 0 else 2 * d_model * subspace_rank
  return num_subspaces * per + (d_model * num_subspaces if gate else 0)


def budget_rank(budget_length: int, d_model: int, max_length: int, short_length: int,
                extra_params: int = 0) -> int:
  """The largest rank R with S·D + M·R + R·D + extra <= budget_length·D.

  DePT's example: 100 x 768 with S = 60, M = 256 -> R = 30 (exactly 76,800 parameters).

  Raises:
    ValueError: when the budget leaves no room for R >= 1.
  """
  room = (budget_length - short_length) * d_model - extra_params
  rank = room // (max_length + d_model)
  if rank < 1:
    raise ValueError(f"A budget of {budget_length} x {d_model} leaves {room} parameters for "
                     f"A and B after a {short_length}-row prompt and {extra_params} "
                     f"fusion / projection weights: less than one rank ({max_length + d_model}"
                     "). Shorten the prompt or the fusion / projection widths.")
  return int(rank)


def budget_match(budget_length: int, d_model: int, max_length: int,
                 short_length: int | None = None, extra_params: int = 0) -> tuple[int, int]:
  """(S, R) for a target of `budget_length x d_model` trainable parameters.

  S defaults to 60 % of the budget's rows (DePT's 100 -> 60).
  """
  s = round(0.6 * budget_length) if short_length is None else short_length
  return s, budget_rank(budget_length, d_model, max_length, s, extra_params)


class _Fusion(nn.Module):
  """P_f = P_s + softmax((P_s Wq)(Mem Wk)^T / sqrt(A)) (Mem Wv) Wo (our design)."""
  dim: int

  @nn.compact
  def __call__(self, p_s: Array, memory: Array) -> Array:
    d = p_s.shape[-1]
    init = nn.initializers.lecun_normal()
    wq = self.param("Wq", init, (d, self.dim))
    wk = self.param("Wk", init, (d, self.dim))
    wv = self.param("Wv", init, (d, self.dim))
    wo = self.param("Wo", nn.initializers.zeros, (self.dim, d))  # Identity at init.
    q = jnp.einsum("SD,DA->SA", p_s, wq)
    k = jnp.einsum("ND,DA->NA", memory, wk)  # N memory rows (R or M).
    v = jnp.einsum("ND,DA->NA", memory, wv)
    att = jax.nn.softmax(jnp.einsum("SA,NA->SN", q, k) / math.sqrt(self.dim), axis=-1)
    return p_s + jnp.einsum("SN,NA,AE->SE", att, v, wo)  # [S, D]


class _Projection(nn.Module):
  """P* = sum_k g_k P_f W_k (+ P_f), g = softmax(mean_rows(P_f) Wg) (our design)."""
  num_subspaces: int
  rank: int
  gate: bool
  residual: bool

  @nn.compact
  def __call__(self, p_f: Array) -> Array:
    d, k = p_f.shape[-1], self.num_subspaces
    if self.gate:
      wg = self.param("Wg", nn.initializers.normal(0.02), (d, k))
      g = jax.nn.softmax(jnp.einsum("D,DK->K", jnp.mean(p_f, axis=0), wg))  # [K]
      self.sow("diagnostics", "gate", g)
    else:
      g = jnp.full((k,), 1.0 / k, p_f.dtype)
    if self.rank == 0:
      # Identity at init either way: W = I without the residual, W = 0 with it.
      eye = lambda key, shape, dtype=jnp.float32: jnp.broadcast_to(jnp.eye(d, dtype=dtype),
                                                                    shape)
      w = self.param("W", nn.initializers.zeros if self.residual else eye, (k, d, d))
      out = jnp.einsum("K,SD,KDE->SE", g, p_f, w)
    else:
      u = self.param("U", nn.initializers.lecun_normal(batch_axis=(0,)), (k, d, self.rank))
      v = self.param("V", nn.initializers.zeros, (k, self.rank, d))  # Identity at init.
      out = jnp.einsum("K,SD,KDQ,KQE->SE", g, p_f, u, v)
    return p_f + out if self.residual else out


class _OffsetSeam:
  """The seam methods of a module whose `_parts(d_model)` gives (prompt [S, D], offset [M, D]).

  Shared by the trainable `EPTPrompt` and the inference-only `OffsetPrompt`.
  """

  def prompt(self, d_model: int) -> Array:
    """The effective short prompt P* [S, D] (what the encoder sees in front of the inputs)."""
    return self._parts(d_model)[0]

  def exports(self, d_model: int) -> dict[str, Array]:
    """Arrays besides the prompt that inference needs: the input offset [M, D]."""
    return {OFFSET_EXPORT: self._parts(d_model)[1]}

  def __call__(self, embedded: Array, tokens: Array, mask: Array, *,
               task_ids: Array | None = None, deterministic: bool = True
               ) -> tuple[Array, Array]:
    del task_ids, deterministic
    p, offset = self._parts(embedded.shape[-1])
    return apply_offset_and_combine(p, offset, embedded, tokens, mask, self.eos_id)


class EPTPrompt(_OffsetSeam, nn.Module):
  """The EPT-style prompt module (see the module docstring); prefix placement.

  Attributes:
    length: S, the short prompt's rows.
    rank: R of A [M, R] and B [R, D]; 0 picks it from `budget_length` (`budget_rank`).
    max_length: M = L_max, the longest input the offset covers.
    alpha: the offset's scale is alpha / sqrt(R) (DePT: 8).
    budget_length: the plain prompt length whose parameter count `rank=0` matches.
    initializer: the short prompt's initializer (as `Prompt`'s).
    fusion: prompt fusion on / off.
    fusion_memory: "B" (the rows of B) or "AB" (the rows of the scaled A @ B).
    fusion_dim: A, the fusion attention width.
    num_subspaces: K; 0 turns the multi-space projection off.
    subspace_rank: Q of each subspace map (0: full [D, D] maps).
    gate: the gating network (False: a uniform 1/K mix).
    projection_residual: P* adds P_f (required when Q > 0).
  """
  length: int = 60
  rank: int = 0
  max_length: int = 256
  alpha: float = 8.0
  budget_length: int = 100
  initializer: initializers.Initializer = initializers.random_uniform()
  fusion: bool = False
  fusion_memory: str = "B"
  fusion_dim: int = 4
  num_subspaces: int = 0
  subspace_rank: int = 2
  gate: bool = True
  projection_residual: bool = True
  placement: str = "prefix"
  eos_id: int = 1

  PEFT_EXPORTABLE = False
  PEFT_UNSUPPORTED_REASON = PEFT_REASON

  def __post_init__(self):
    super().__post_init__()
    if self.fusion_memory not in FUSION_MEMORIES:
      raise ValueError(f"fusion_memory must be one of {FUSION_MEMORIES}, got "
                       f"{self.fusion_memory!r}.")
    if self.num_subspaces and self.subspace_rank and not self.projection_residual:
      raise ValueError("Low-rank subspaces (subspace_rank > 0) need projection_residual: "
                       "without it P* has rank <= K·Q and the init is not the plain prompt.")
    if self.placement != "prefix":
      raise ValueError("EPTPrompt supports the prefix placement only (DePT's).")

  def extra_params(self, d_model: int) -> int:
    """Fusion and projection weights (they count against the budget too)."""
    fusion = fusion_param_count(d_model, self.fusion_dim) if self.fusion else 0
    return fusion + projection_param_count(d_model, self.num_subspaces, self.subspace_rank,
                                           self.gate)

  def resolved_rank(self, d_model: int) -> int:
    if self.rank:
      return self.rank
    return budget_rank(self.budget_length, d_model, self.max_length, self.length,
                       self.extra_params(d_model))

  @nn.compact
  def _parts(self, d_model: int) -> tuple[Array, Array]:
    """(P* [S, D], input offset [M, D]) from the parameters."""
    r = self.resolved_rank(d_model)
    p_s = self.param("prompt", nn.with_logical_partitioning(self.initializer, PROMPT_AXES),
                     (self.length, d_model))
    a = self.param("A", kaiming_uniform_a, (self.max_length, r))
    b = self.param("B", nn.initializers.zeros, (r, d_model))
    offset = (self.alpha / math.sqrt(r)) * jnp.einsum("MR,RD->MD", a, b)  # [M, D]
    if self.is_initializing():
      self._log_counts(d_model, r)
    p = p_s
    if self.fusion:
      p = _Fusion(self.fusion_dim, name="fusion")(p, b if self.fusion_memory == "B" else offset)
    if self.num_subspaces:
      p = _Projection(self.num_subspaces, self.subspace_rank, self.gate,
                      self.projection_residual, name="projection")(p)
    return p, offset

  def _log_counts(self, d_model: int, r: int) -> None:
    parts = {"prompt": self.length * d_model, "A": self.max_length * r, "B": r * d_model,
             "fusion/projection": self.extra_params(d_model)}
    total = sum(parts.values())
    logging.info("EPT-style prompt (S=%d, R=%d, L_max=%d): %s trainable (%s); a plain "
                 "%d-token prompt: %s.", self.length, r, self.max_length, f"{total:,}",
                 ", ".join(f"{k} {v:,}" for k, v in parts.items()), self.budget_length,
                 f"{self.budget_length * d_model:,}")



def apply_offset_and_combine(p: Array, offset: Array, embedded: Array, tokens: Array,
                             mask: Array, eos_id: int = 1) -> tuple[Array, Array]:
  """Inputs cut to M, offset at their own positions (padding untouched), prompt prepended.

  Args:
    p: the prompt [S, D].
    offset: the input offset [M, D].
    embedded: [B, L, D] embedded inputs; tokens, mask: [B, L].
    eos_id: unused by the prefix placement (kept for the seam's signature).

  Returns:
    [B, S + min(L, M), D] and its mask.
  """
  if embedded.ndim != 3 or tokens.shape != embedded.shape[:2] or mask.shape != tokens.shape:
    raise ValueError(f"Expected embedded [B, L, D], tokens and mask [B, L]; got "
                     f"{embedded.shape}, {tokens.shape}, {mask.shape}.")
  if offset.shape[-1] != embedded.shape[-1] or p.shape[-1] != embedded.shape[-1]:
    raise ValueError(f"Prompt {p.shape} and offset {offset.shape} must have D = "
                     f"{embedded.shape[-1]}.")
  max_length = offset.shape[0]
  if embedded.shape[1] > max_length:
    logging.warning("Inputs of length %d are cut to L_max=%d (the offset's rows), as DePT's "
                    "tokenizer truncates.", embedded.shape[1], max_length)
    embedded, tokens, mask = (embedded[:, :max_length], tokens[:, :max_length],
                              mask[:, :max_length])
  length = embedded.shape[1]
  shifted = embedded + offset[None, :length].astype(embedded.dtype)  # [B, L, D]
  embedded = jnp.where(mask[..., None], shifted, embedded)
  return combine_lib.combine("prefix", p, embedded, tokens, mask, eos_id)


class OffsetPrompt(_OffsetSeam, nn.Module):
  """Inference-only: a plain prompt [S, D] plus a fixed input offset [M, D] (EPT exports).

  Built by `prompt-jax eval` / `infer` from PROMPT_FILE and OFFSET_FILE; its parameters are
  `prompt/prompt` and `prompt/input_offset`.
  """
  length: int
  max_length: int
  eos_id: int = 1

  PEFT_EXPORTABLE = False
  PEFT_UNSUPPORTED_REASON = PEFT_REASON

  @nn.compact
  def _parts(self, d_model: int) -> tuple[Array, Array]:
    zeros = nn.initializers.zeros
    return (self.param("prompt", nn.with_logical_partitioning(zeros, PROMPT_AXES),
                       (self.length, d_model)),
            self.param(OFFSET_EXPORT, zeros, (self.max_length, d_model)))



# Parameter groups: which paths train, at which rate (kept in Python, tested).
PROMPT_GROUP, LOW_RANK_GROUP, MIXER_GROUP = "prompt", "low_rank", "mixer"


def param_rules() -> opt_lib.Rules:
  """The short prompt, A / B, and the fusion / projection weights; the T5 is frozen."""
  return ((r"^prompt/prompt$", PROMPT_GROUP),
          (r"^prompt/(A|B)$", LOW_RANK_GROUP),
          (r"^prompt/(fusion|projection)/", MIXER_GROUP),
          (r"^(token_embedder|encoder|decoder)/", opt_lib.FROZEN))


def param_groups(prompt_learning_rate: float = 0.3, low_rank_learning_rate: float = 5e-4,
                 mixer_learning_rate: float = 5e-4,
                 base: opt_lib.OptimizerConfig = opt_lib.OptimizerConfig()
                 ) -> opt_lib.ParamGroups:
  """Three groups, each `base` (Adafactor settings) with its own learning rate."""
  lr = {PROMPT_GROUP: prompt_learning_rate, LOW_RANK_GROUP: low_rank_learning_rate,
        MIXER_GROUP: mixer_learning_rate}
  return opt_lib.ParamGroups(param_rules(), {g: dataclasses.replace(base, learning_rate=v)
                                             for g, v in lr.items()})
