"""The effective prompt: what the encoder sees, computed from a prompt module's parameters.

A prompt module's `prompt(d_model)` method returns it: `[P, D]` for one prompt, `[T, P, D]`
for a per-task bank. Export (`.npy`, `prompt_best.npy`, the PEFT adapter), evaluation of an
exported file and interpretability all use this, never a raw parameter, so a reparameterised
prompt exports what it computes and a plain `Prompt` loaded from that file reproduces it.

A module whose encoder input needs more than the prompt (e.g. a learned input offset) may
define `exports(d_model) -> {name: array}`; `effective_exports` returns those arrays, which
the run writes beside the prompt as `prompts/<name>_<step>.npy`. Such a module sets
`PEFT_UNSUPPORTED_REASON` (a sentence) and no PEFT adapter is written for it.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np


def prompt_module(model: nn.Module) -> nn.Module | None:
  """The prompt module of a `T5Transformer` (None for a bare network)."""
  return getattr(model, "prompt", None)


def has_effective_prompt(model: nn.Module) -> bool:
  module = prompt_module(model)
  return module is not None and callable(getattr(type(module), "prompt", None))


def effective_prompt(model: nn.Module, params: Mapping[str, Any]) -> np.ndarray | None:
  """The prompt the encoder sees, as float32 numpy ([P, D] or [T, P, D]).

  Args:
    model: a `T5Transformer` whose prompt module has a `prompt(d_model)` method.
    params: a parameter tree holding at least the whole `prompt/` subtree (trainable and
      frozen parts merged).

  Returns:
    The effective prompt, or None when the model has no prompt module with `prompt()`.
  """
  if not has_effective_prompt(model):
    return None
  return np.asarray(jax.device_get(_call_prompt_method(model, params, "prompt")), np.float32)


def _call_prompt_method(model: nn.Module, params: Mapping[str, Any], method: str) -> Any:
  """`model.prompt.<method>(d_model)`, bound to the `prompt/` parameters."""
  d_model = model.config.d_model
  return model.apply({"params": {"prompt": params["prompt"]}},
                     method=lambda m: getattr(m.prompt, method)(d_model))


def effective_exports(model: nn.Module, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The prompt module's extra inference arrays {name: float32 numpy} ({} without `exports`)."""
  module = prompt_module(model)
  if module is None or not callable(getattr(type(module), "exports", None)):
    return {}
  out = _call_prompt_method(model, params, "exports")
  return {name: np.asarray(jax.device_get(v), np.float32) for name, v in out.items()}


class PeftUnsupportedError(ValueError):
  """The prompt cannot be written as a PEFT prompt-tuning adapter (the message says why)."""


def require_peft_exportable(model: nn.Module, prompt: np.ndarray | None) -> None:
  """Raises `PeftUnsupportedError` with `peft_unsupported_reason` unless PEFT can hold it."""
  reason = peft_unsupported_reason(model, prompt)
  if reason is not None:
    raise PeftUnsupportedError(f"No PEFT adapter: {reason}")


def peft_unsupported_reason(model: nn.Module, prompt: np.ndarray | None) -> str | None:
  """Why this model's prompt cannot be a PEFT prompt-tuning adapter (None: it can).

  PEFT prompt tuning prepends one [P, D] table to the encoder input and does nothing else,
  so only modules that declare `PEFT_EXPORTABLE = True` (the plain `Prompt` and subclasses
  that only compute the table) at the prefix placement qualify.
  """
  module = prompt_module(model)
  if module is None or prompt is None:
    return "the model has no prompt"
  name = type(module).__name__
  if not getattr(module, "PEFT_EXPORTABLE", False):
    if getattr(module, "PEFT_UNSUPPORTED_REASON", None):
      return module.PEFT_UNSUPPORTED_REASON
    return f"PEFT has no equivalent of {name} (it only prepends a [P, D] table)"
  if getattr(module, "placement", "prefix") != "prefix":
    return f"PEFT prompt tuning only prepends; {name} uses placement {module.placement!r}"
  if prompt.ndim != 2:
    return f"the prompt is per task {prompt.shape}; export one task's [P, D] at a time"
  return None
