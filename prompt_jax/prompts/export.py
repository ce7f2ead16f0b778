"""A trained prompt [P, D] as a PEFT prompt-tuning adapter, and back.

The adapter is a directory with `adapter_config.json` and `adapter_model.safetensors`, the
layout `peft.PeftModel.from_pretrained(hf_t5_model, adapter_dir)` reads. What peft (checked
against its 0.21 source) does with a `task_type="SEQ_2_SEQ_LM"`, `peft_type="PROMPT_TUNING"`
adapter, and why the export is written as it is:

- The weights are one tensor, `prompt_embeddings`, of shape
  [num_virtual_tokens * num_transformer_submodules, token_dim], loaded strictly into the
  `nn.Embedding` of the prompt encoder.
- `num_transformer_submodules` defaults to 2 for seq2seq, which doubles the table, but the
  prompt-tuning forward and `generate` only ever prepend the first `num_virtual_tokens` rows to
  the encoder's input embeddings (and ones to the encoder attention mask); the other rows are
  never read and nothing is prepended to the decoder. We write 1, so the file holds exactly
  the encoder rows [P, D] and nothing unused.
- The rows go in front of the raw word embeddings (T5 does not scale them), so the prompt
  takes encoder positions 0..P-1 of the relative position bias and the decoder's
  cross-attention sees P extra visible positions: Lester's prefix, our `placement="prefix"`.
  A suffix placement or a prompt bank has no PEFT equivalent and cannot be exported here.

No pickle anywhere: JSON and safetensors only.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_dtypes  # noqa: F401  Registers bfloat16 with numpy (a bf16 adapter file needs it).
import numpy as np
from etils import epath
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from prompt_jax.models import T5Config

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHTS_KEY = "prompt_embeddings"
PEFT_TYPE = "PROMPT_TUNING"
TASK_TYPE = "SEQ_2_SEQ_LM"
# Files an adapter directory may hold (peft also writes a model card); anything else in an
# existing output directory means it is not ours to replace.
_ADAPTER_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, "README.md"})


class AdapterError(ValueError):
  """A PEFT adapter that is not a seq2seq prompt-tuning adapter this model can use."""


def _checked_prompt(prompt: Any, config: T5Config | None) -> np.ndarray:
  """The prompt as float32 [P, D], after checking rank, dtype, values and d_model."""
  array = np.asarray(prompt)
  if array.ndim != 2 or 0 in array.shape:
    raise ValueError(f"A prompt to export must be [P, D] with P, D > 0, got shape "
                     f"{array.shape} (a prompt bank [T, P, D] is exported one task at a time).")
  if not np.issubdtype(array.dtype, np.floating) and array.dtype != ml_dtypes.bfloat16:
    raise ValueError(f"A prompt to export must be floating point, got dtype {array.dtype}.")
  array = array.astype(np.float32)
  if not np.all(np.isfinite(array)):
    raise ValueError("The prompt holds NaN or infinite values; refusing to export it.")
  if config is not None and array.shape[1] != config.d_model:
    raise ValueError(f"Prompt width D={array.shape[1]} does not match the model's "
                     f"d_model={config.d_model} (prompt shape {array.shape}).")
  return array


def adapter_config(num_virtual_tokens: int, token_dim: int, *,
                   base_model_name_or_path: str | None = None,
                   config: T5Config | None = None) -> dict[str, Any]:
  """The `adapter_config.json` contents of a seq2seq prompt-tuning adapter.

  The keys are those `peft.PromptTuningConfig` itself writes, so peft loads it without
  warnings. `num_layers` / `num_attention_heads` are informative only for prompt tuning; left
  null (no `config`), peft fills them from the base model's config.

  Args:
    num_virtual_tokens: P.
    token_dim: D (the model's d_model).
    base_model_name_or_path: what the prompt was trained on, recorded for the reader.
    config: the model's config, for `num_layers` / `num_attention_heads`.

  Returns:
    The JSON-serialisable config dict.
  """
  return {
      "auto_mapping": None,
      "base_model_name_or_path": base_model_name_or_path,
      "inference_mode": True,
      "modules_to_save": None,
      "num_attention_heads": None if config is None else config.num_heads,
      "num_layers": None if config is None else config.num_layers,
      # Encoder rows only: see the module docstring.
      "num_transformer_submodules": 1,
      "num_virtual_tokens": int(num_virtual_tokens),
      "peft_type": PEFT_TYPE,
      "peft_version": None,  # peft fills in its own version on load.
      # Only used to initialise a new prompt; the saved rows replace it on load.
      "prompt_tuning_init": "RANDOM",
      "prompt_tuning_init_text": None,
      "revision": None,
      "task_type": TASK_TYPE,
      "token_dim": int(token_dim),
      "tokenizer_kwargs": None,
      "tokenizer_name_or_path": None,
  }


def _write_file(path: epath.Path, data: bytes) -> None:
  with path.open("wb") as f:
    f.write(data)
    f.flush()
    if hasattr(f, "fileno"):  # A local file: on disk before the rename publishes it.
      os.fsync(f.fileno())


def _publish_dir(out_dir: epath.Path, files: dict[str, bytes]) -> None:
  """Writes `files` into a sibling temporary directory, then renames it to `out_dir`.

  A reader sees the old adapter, no adapter, or the new one; never a mix of the two files.
  An existing `out_dir` is replaced only if it holds nothing but adapter files. (Local and
  any `etils.epath` filesystem; on object stores the renames are copies.)
  """
  if out_dir.exists():
    if not out_dir.is_dir():
      raise FileExistsError(f"{out_dir} exists and is not a directory.")
    foreign = sorted({p.name for p in out_dir.iterdir()} - _ADAPTER_FILES)
    if foreign:
      raise FileExistsError(f"{out_dir} exists and holds {foreign}, not only adapter files "
                            f"{sorted(_ADAPTER_FILES)}; refusing to replace it.")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
  old = out_dir.parent / f".{out_dir.name}.old{os.getpid()}"
  for stale in (tmp, old):  # Left behind by a process that died here with our pid.
    stale.rmtree(missing_ok=True)
  try:
    tmp.mkdir()
    for name, data in files.items():
      _write_file(tmp / name, data)
    if out_dir.exists():
      out_dir.rename(old)
    tmp.rename(out_dir)
  except BaseException:
    if old.exists() and not out_dir.exists():
      old.rename(out_dir)  # Put the previous adapter back.
    raise
  finally:
    tmp.rmtree(missing_ok=True)
  old.rmtree(missing_ok=True)


def export_peft_adapter(prompt: Any, out_dir: str | os.PathLike, *,
                        base_model_name_or_path: str | None = None,
                        config: T5Config | None = None) -> epath.Path:
  """Writes `prompt` as a PEFT prompt-tuning adapter for a T5 encoder-decoder.

  Load it with `peft.PeftModel.from_pretrained(hf_model, out_dir)` onto the HF PyTorch model of
  the checkpoint the prompt was trained on; its logits then match prompt_jax's with this prompt
  in prefix placement.

  Args:
    prompt: the prompt [P, D] (numpy or jax array, any float dtype; stored as float32).
    out_dir: the adapter directory; created, or replaced if it holds only adapter files.
    base_model_name_or_path: recorded in the config (peft uses it only when it is asked to
      load the base model itself).
    config: the model's config; checks D == d_model and records layers / heads.

  Returns:
    The adapter directory.

  Raises:
    ValueError: a prompt that is not a finite float [P, D] matching `config.d_model`.
    FileExistsError: `out_dir` is a file or a directory holding other files.
  """
  array = _checked_prompt(prompt, config)  # [P, D]
  num_tokens, dim = array.shape
  cfg = adapter_config(num_tokens, dim, base_model_name_or_path=base_model_name_or_path,
                       config=config)
  files = {
      # "format": "pt" is what HF tools expect in the metadata of a PyTorch-loaded file.
      WEIGHTS_NAME: safetensors_bytes({WEIGHTS_KEY: np.ascontiguousarray(array)},
                                      metadata={"format": "pt"}),
      CONFIG_NAME: (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode(),
  }
  from prompt_jax.train import paths  # Local: the exporter is usable without the trainer.
  out = paths.as_path(out_dir)
  _publish_dir(out, files)
  return out


def _read_adapter_config(path: pathlib.Path) -> tuple[int, int, int]:
  """(num_virtual_tokens, token_dim, num_transformer_submodules) of a valid config file."""
  try:
    cfg = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise AdapterError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(cfg, dict):
    raise AdapterError(f"{path} holds a JSON {type(cfg).__name__}, not an object.")
  for key, want in (("peft_type", PEFT_TYPE), ("task_type", TASK_TYPE)):
    if cfg.get(key) != want:
      raise AdapterError(f"{path}: {key} is {cfg.get(key)!r}, expected {want!r} (only "
                         "seq2seq prompt-tuning adapters hold a prompt prompt_jax can use).")
  values = {}
  for key in ("num_virtual_tokens", "token_dim"):
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise AdapterError(f"{path}: {key} must be a positive integer, got {value!r}.")
    values[key] = value
  # peft's default for seq2seq is 2 (an unused decoder copy): see the module docstring.
  submodules = cfg.get("num_transformer_submodules")
  submodules = 2 if submodules is None else submodules
  if submodules not in (1, 2):
    raise AdapterError(f"{path}: num_transformer_submodules is {submodules!r}, expected 1 or 2.")
  return values["num_virtual_tokens"], values["token_dim"], submodules


def _read_weights(path: pathlib.Path) -> np.ndarray:
  """The single `prompt_embeddings` tensor of an adapter weights file."""
  try:
    with safe_open(str(path), framework="numpy") as f:
      keys = sorted(f.keys())
      if keys != [WEIGHTS_KEY]:
        raise AdapterError(f"{path} holds tensors {keys}, expected exactly [{WEIGHTS_KEY!r}].")
      return f.get_tensor(WEIGHTS_KEY)
  except SafetensorError as e:
    raise AdapterError(f"{path} is not a readable safetensors file: {e}") from e


def load_peft_adapter(adapter_dir: str | os.PathLike, *,
                      config: T5Config | None = None) -> np.ndarray:
  """Reads the encoder prompt [P, D] of a PEFT seq2seq prompt-tuning adapter.

  Reads adapters written by `export_peft_adapter` and by peft itself; of peft's default
  two-submodule table [2P, D] it returns the first P rows, the only ones peft prepends.

  Args:
    adapter_dir: a directory with `adapter_config.json` and `adapter_model.safetensors`.
    config: the model's config; when given, D must equal its d_model.

  Returns:
    The prompt [P, D], float32 (bitwise what a float32 export wrote).

  Raises:
    FileNotFoundError: the directory or one of its two files is missing.
    AdapterError: a wrong peft_type / task_type, malformed values, unexpected tensors, or a
      shape that disagrees with the config file or with `config.d_model`.
  """
  root = pathlib.Path(adapter_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"No PEFT adapter directory at {root}.")
  for name in (CONFIG_NAME, WEIGHTS_NAME):
    if not (root / name).is_file():
      raise FileNotFoundError(f"PEFT adapter {root} lacks {name} (it holds "
                              f"{sorted(os.listdir(root))}).")
  num_tokens, dim, submodules = _read_adapter_config(root / CONFIG_NAME)
  table = _read_weights(root / WEIGHTS_NAME)
  expected = (num_tokens * submodules, dim)
  if table.shape != expected:
    raise AdapterError(
        f"{root / WEIGHTS_NAME}: {WEIGHTS_KEY} has shape {table.shape}, but {CONFIG_NAME} "
        f"says {expected} (num_virtual_tokens {num_tokens} x num_transformer_submodules "
        f"{submodules}, token_dim {dim}).")
  if not (np.issubdtype(table.dtype, np.floating) or table.dtype == ml_dtypes.bfloat16):
    raise AdapterError(f"{root / WEIGHTS_NAME}: {WEIGHTS_KEY} has dtype {table.dtype}, "
                       "expected a float type.")
  if config is not None and dim != config.d_model:
    raise AdapterError(f"{root}: the prompt is [{num_tokens}, {dim}] but the model's d_model "
                       f"is {config.d_model}.")
  return np.ascontiguousarray(table[:num_tokens], dtype=np.float32)  # [P, D]
