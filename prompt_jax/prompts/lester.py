"""Lester et al. (2021) prompt tuning: one trainable prompt [P, D], or a bank of them.

Both modules follow the `PromptSeam` protocol of `prompt_jax.models.t5`:
`(embedded [B, L, D], tokens [B, L], mask [B, L]) -> ([B, P+L, D], [B, P+L])`.
Their parameter is `prompt` with logical axes ("prompt", "prompt_embed") (a bank adds
"prompt_tasks" in front); all three stay replicated on the mesh.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax.prompts import combine as combine_lib
from prompt_jax.prompts import initializers

Array = jax.Array
PROMPT_AXES = ("prompt", "prompt_embed")


class Prompt(nn.Module):
  """A single prompt [P, D] shared by every example.

  Attributes:
    length: P, the number of prompt vectors.
    initializer: a `prompt_jax.prompts.initializers` initializer (default: the paper's U[-0.5, 0.5]).
    placement: "prefix" (Lester) or "suffix_before_eos" (cross-lingual paper).
    eos_id: EOS id, used by the suffix placement.
  """
  length: int
  initializer: initializers.Initializer = initializers.random_uniform()
  placement: str = "prefix"
  eos_id: int = 1

  PEFT_EXPORTABLE = True  # The encoder sees only the [P, D] table: a PEFT adapter can hold it.

  @nn.compact
  def prompt(self, d_model: int) -> Array:
    """The effective prompt [P, D] the encoder sees.

    Subclasses override this (decorated `@nn.compact`, where their parameters are declared)
    to compute it from other parameters, e.g. a reparameterisation; export and evaluation
    call it, so whatever it returns is what a trained run ships.
    """
    return self.param("prompt", nn.with_logical_partitioning(self.initializer, PROMPT_AXES),
                      (self.length, d_model))

  def __call__(self, embedded: Array, tokens: Array, mask: Array, *,
               task_ids: Array | None = None, deterministic: bool = True
               ) -> tuple[Array, Array]:
    del task_ids, deterministic
    p = self.prompt(embedded.shape[-1])  # [P, D]
    return combine_lib.combine(self.placement, p, embedded, tokens, mask, self.eos_id)


def bank_init(init: initializers.Initializer) -> initializers.Initializer:
  """Applies a [P, D] initializer to every task of a [T, P, D] bank (independent keys).

  An initializer with an `init_bank(key, shape, dtype)` method (one that knows each task's
  own rows, e.g. a per-task export of an earlier run) initialises the whole bank itself.
  """
  if callable(getattr(init, "init_bank", None)):
    return init.init_bank

  def fn(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    keys = jax.random.split(key, shape[0])
    return jnp.stack([init(k, tuple(shape[1:]), dtype) for k in keys])

  return fn


class PromptBank(nn.Module):
  """A bank of prompts [T, P, D]; each example takes the prompt of its `task_ids` entry.

  One batch can then mix tasks (serving many tasks on one frozen model, IPT's multi-task
  stage). `num_tasks=0` means "the mixture's task count": the run builder fills it in.
  """
  num_tasks: int = 0
  length: int = 100
  initializer: initializers.Initializer = initializers.random_uniform()
  placement: str = "prefix"
  eos_id: int = 1

  PEFT_EXPORTABLE = True  # Each task's row is a plain [P, D] prompt.

  @nn.compact
  def prompt(self, d_model: int) -> Array:
    """The effective prompts of every task [T, P, D] (row t serves task id t)."""
    return self.param(
        "prompt", nn.with_logical_partitioning(bank_init(self.initializer),
                                               ("prompt_tasks", *PROMPT_AXES)),
        (self.num_tasks, self.length, d_model))

  def __call__(self, embedded: Array, tokens: Array, mask: Array, *,
               task_ids: Array | None = None, deterministic: bool = True
               ) -> tuple[Array, Array]:
    del deterministic
    if task_ids is None:
      raise ValueError("PromptBank needs `task_ids` [B] (a task_ids feature in the batch).")
    table = self.prompt(embedded.shape[-1])  # [T, P, D]
    p = jnp.take(table, task_ids, axis=0)  # [B, P, D]
    return combine_lib.combine(self.placement, p, embedded, tokens, mask, self.eos_id)


def init_prompt_params(prompt: nn.Module, key: Array, d_model: int) -> dict:
  """Initialises a prompt module on its own (no T5 forward pass); returns its params."""
  variables = prompt.init(key, jnp.zeros((1, 1, d_model), jnp.float32),
                          jnp.ones((1, 1), jnp.int32), jnp.ones((1, 1), bool),
                          task_ids=jnp.zeros((1,), jnp.int32))
  return nn.unbox(variables["params"])
