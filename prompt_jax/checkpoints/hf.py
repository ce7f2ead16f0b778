"""HF-format T5 / mT5 checkpoints: safetensors (single or sharded), flax msgpack, torch .bin.

HF names map onto T5X paths one to one (`hf_to_t5x`); the inverse (`to_hf_state_dict`)
exports params back to an HF PyTorch state dict. Layout changes, each with its reason:

* `nn.Linear` weights are stored [out, in]; T5X kernels are [in, out]: transposed. HF flax
  `kernel`s are already [in, out].
* `relative_attention_bias` is an embedding [N, H] (bucket -> per-head bias); T5X's
  `rel_embedding` is [H, N]: transposed.
* `lm_head.weight` [V, D] is a Linear: transposed to `logits_dense/kernel` [D, V].
* `shared`, `encoder.embed_tokens` and `decoder.embed_tokens` are one tied tensor [V, D]
  (the token embedding); copies are accepted and shape-checked, and so is `lm_head.weight`
  of a tied (T5 1.0) model. Their values are taken to equal `shared`'s, as HF does.

Tying. transformers >= 5 always writes `tie_word_embeddings: true` and ties `lm_head` to
`shared` unless the file holds both with different values; T5 1.0's decoder-output rescale
is recorded as `scale_decoder_outputs` (mT5 never rescales). `T5Config.from_hf_dict` turns
that into `tie_word_embeddings` = "rescale and project with the embedding" (T5 1.0). An
unscaled model whose file holds no `lm_head.weight` gets `logits_dense` from `shared`,
which is what HF itself computes with; an older config that says untied requires `lm_head`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import ml_dtypes
import numpy as np
from flax import traverse_util

from prompt_jax.checkpoints.sources import (ArraySource, CheckpointError, SafetensorsSource,
                                            TensorSource, TransposedSource)
from prompt_jax.models.config import T5Config

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FLAX_MSGPACK = "flax_model.msgpack"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
# Weight files in order of preference.
WEIGHT_FILES = (SAFETENSORS_INDEX, SAFETENSORS, FLAX_MSGPACK, TORCH_BIN_INDEX, TORCH_BIN)

EMBEDDING = "token_embedder/embedding"
LOGITS = "decoder/logits_dense/kernel"
# Old HF exports carry a relative-position table in the first cross-attention that no T5
# uses (HF skips it on load too).
_IGNORED = {"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"}
_EMBED_NAMES = ("shared", "encoder.embed_tokens", "decoder.embed_tokens")
_ATTN = {"q": "query", "k": "key", "v": "value", "o": "out"}
_MLP = ("wi", "wi_0", "wi_1", "wo")
# (HF module, T5X module, T5X pre-norm) of each sub-layer of an encoder / decoder block.
_SUBLAYERS = {
    "encoder": (("SelfAttention", "attention", "pre_attention_layer_norm"),
                ("DenseReluDense", "mlp", "pre_mlp_layer_norm")),
    "decoder": (("SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                ("EncDecAttention", "encoder_decoder_attention",
                 "pre_cross_attention_layer_norm"),
                ("DenseReluDense", "mlp", "pre_mlp_layer_norm")),
}
_BLOCK = re.compile(
    r"^(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\.(.+)\.(weight|kernel|embedding)$")


def _parse_block(stack: str, block: int, sub: int, rest: str) -> tuple[str, str] | None:
  if sub >= len(_SUBLAYERS[stack]):
    return None
  hf_module, module, norm = _SUBLAYERS[stack][sub]
  prefix = f"{stack}/layers_{block}"
  if rest == "layer_norm":
    return f"{prefix}/{norm}/scale", "norm"
  head, _, leaf = rest.partition(".")
  if head != hf_module:
    return None
  if leaf == "relative_attention_bias" and block == 0 and sub == 0:
    return f"{stack}/relpos_bias/rel_embedding", "relpos"
  if hf_module == "DenseReluDense" and leaf in _MLP:
    return f"{prefix}/mlp/{leaf}/kernel", "linear"
  if hf_module != "DenseReluDense" and leaf in _ATTN:
    return f"{prefix}/{module}/{_ATTN[leaf]}/kernel", "linear"
  return None


def hf_to_t5x(name: str) -> tuple[str, str] | None:
  """Maps an HF tensor name to `(t5x_path, kind)`, or None if no T5 parameter has it.

  `kind` is 'linear' (transposed when stored as `.weight`), 'relpos' (always transposed),
  'embed' or 'norm' (never). Accepts PyTorch names (`...q.weight`) and HF flax names
  joined with dots (`...q.kernel`, `shared.embedding`).
  """
  stem, _, suffix = name.rpartition(".")
  if stem in _EMBED_NAMES and suffix in ("weight", "embedding"):
    return EMBEDDING, "embed"
  if stem == "lm_head" and suffix in ("weight", "kernel"):
    return LOGITS, "linear"
  if name == "encoder.final_layer_norm.weight":
    return "encoder/encoder_norm/scale", "norm"
  if name == "decoder.final_layer_norm.weight":
    return "decoder/decoder_norm/scale", "norm"
  m = _BLOCK.match(name)
  if m is None:
    return None
  parsed = _parse_block(m.group(1), int(m.group(2)), int(m.group(3)), m.group(4))
  if parsed is None:
    return None
  kinds_suffixes = {"linear": ("weight", "kernel"), "relpos": ("weight", "embedding"),
                    "norm": ("weight",)}
  return parsed if m.group(5) in kinds_suffixes[parsed[1]] else None


def _to_t5x_layout(name: str, kind: str, source: TensorSource) -> TensorSource:
  transpose = kind == "relpos" or (kind == "linear" and name.endswith(".weight"))
  return TransposedSource(source) if transpose else source


def map_hf_tensors(raw: Mapping[str, TensorSource], config: T5Config, *, hf_ties_lm_head: bool
                   ) -> tuple[dict[str, TensorSource], dict[str, TensorSource], list[str]]:
  """HF-named tensors -> (`{t5x_path: source}`, unrecognized tensors, tied-copy conflicts).

  Args:
    raw: the checkpoint's tensors by HF name, in the file's layout.
    config: the model config (its `tie_word_embeddings` = T5 1.0's tied, rescaled head).
    hf_ties_lm_head: whether the HF config ties `lm_head` to `shared` when the file has no
      separate `lm_head` (then an untied model's `logits_dense` is `shared` transposed).
  """
  sources: dict[str, TensorSource] = {}
  unrecognized: dict[str, TensorSource] = {}
  conflicts: list[str] = []
  copies: list[tuple[str, TensorSource]] = []
  # `shared` first so that it, not a copy, is the embedding's source.
  for name in sorted(raw, key=lambda n: (not n.startswith("shared."), n)):
    parsed = hf_to_t5x(name)
    if parsed is None:
      if name not in _IGNORED:
        unrecognized[name] = raw[name]
      continue
    path, kind = parsed
    source = _to_t5x_layout(name, kind, raw[name])
    if path == LOGITS and config.tie_word_embeddings:
      copies.append((name, TransposedSource(source)))  # Tied head: a copy of the embedding.
    elif path == EMBEDDING and path in sources:
      copies.append((name, source))
    elif path in sources:
      conflicts.append(f"  duplicate   {path}: from {sources[path].origin} and {name}")
    else:
      sources[path] = source
  for name, copy in copies:
    primary = sources.get(EMBEDDING)
    if primary is not None and tuple(copy.shape) != tuple(primary.shape):
      conflicts.append(f"  mis-shaped  {name}: a tied copy of the embedding {primary.shape} "
                       f"({primary.origin}), found {copy.shape}")
    elif primary is None:
      sources[EMBEDDING] = copy
  if (not config.tie_word_embeddings and LOGITS not in sources and hf_ties_lm_head
      and EMBEDDING in sources):
    sources[LOGITS] = TransposedSource(sources[EMBEDDING])  # HF's tied lm_head.
  return sources, unrecognized, conflicts


def hf_names(config: T5Config) -> list[str]:
  """Every tensor name of HF's `T5ForConditionalGeneration.state_dict()` for `config`."""
  names = [f"{n}.weight" for n in _EMBED_NAMES] + ["lm_head.weight",
                                                   "encoder.final_layer_norm.weight",
                                                   "decoder.final_layer_norm.weight"]
  mlp = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
  for stack, count in (("encoder", config.num_layers), ("decoder", config.num_decoder_layers)):
    for i in range(count):
      for sub, (hf_module, _, _) in enumerate(_SUBLAYERS[stack]):
        prefix = f"{stack}.block.{i}.layer.{sub}"
        names.append(f"{prefix}.layer_norm.weight")
        leaves = mlp if hf_module == "DenseReluDense" else tuple(_ATTN)
        names += [f"{prefix}.{hf_module}.{leaf}.weight" for leaf in leaves]
        if i == 0 and sub == 0:
          names.append(f"{prefix}.SelfAttention.relative_attention_bias.weight")
  return names


def to_hf_state_dict(params: Mapping[str, Any], config: T5Config) -> dict[str, np.ndarray]:
  """Exports T5X-layout params to an HF PyTorch T5 state dict (numpy, params' dtype).

  The inverse of the HF mapping: `torch_model.load_state_dict({k: torch.from_numpy(v)})`
  with `strict=True` accepts it. A tied model's `lm_head.weight` is the embedding; an
  untied one's is `logits_dense` transposed (give the torch model its own `lm_head`).
  """
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  out = {}
  for name in hf_names(config):
    path, kind = hf_to_t5x(name)
    if path == LOGITS and config.tie_word_embeddings:
      path, kind = EMBEDDING, "embed"
    value = np.asarray(flat[path])
    transpose = kind in ("linear", "relpos")
    out[name] = np.ascontiguousarray(value.T if transpose else value)
  return out


def normalized_hf_config(hf_dir: str, **overrides: Any) -> tuple[T5Config, bool]:
  """(`T5Config` from `config.json` + overrides, whether HF ties `lm_head` to `shared`)."""
  with open(os.path.join(hf_dir, CONFIG)) as f:
    hf = json.load(f)
  model_type = hf.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise CheckpointError(f"{hf_dir}/{CONFIG} has model_type={model_type!r}; only 't5' and "
                          f"'mt5' encoder-decoders are supported.")
  return T5Config.from_hf_dict(hf, **overrides), bool(hf.get("tie_word_embeddings", True))


def _damaged(filename: str, err: Exception | str) -> CheckpointError:
  """The error for a weight file that its reader cannot decode."""
  reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
  with open(filename, "rb") as f:
    head = f.read(200)
  hint = (" It is a Git LFS pointer, not the weights: fetch them with `git lfs pull`."
          if b"git-lfs" in head else
          f" It is truncated or corrupted (an interrupted download or copy?): download or "
          f"copy {os.path.basename(filename)} again.")
  return CheckpointError(f"Cannot read {filename} ({os.path.getsize(filename)} bytes; "
                         f"{reason}).{hint} Nothing was loaded.")


def _safetensors_file(filename: str) -> dict[str, TensorSource]:
  from safetensors import SafetensorError, safe_open  # Local: only HF checkpoints need it.
  try:
    with safe_open(filename, framework="numpy") as f:
      return {name: SafetensorsSource(filename, name, tuple(f.get_slice(name).get_shape()))
              for name in f.keys()}
  except SafetensorError as err:
    raise _damaged(filename, err) from err


def _index_files(hf_dir: str, index_name: str) -> list[str]:
  with open(os.path.join(hf_dir, index_name)) as f:
    weight_map = json.load(f)["weight_map"]
  files = sorted(set(weight_map.values()))
  missing = [name for name in files if not os.path.exists(os.path.join(hf_dir, name))]
  if missing:
    raise CheckpointError(f"{hf_dir}/{index_name} lists shard(s) that are not there: "
                          f"{missing}.")
  return [os.path.join(hf_dir, name) for name in files]


def _flax_msgpack(filename: str) -> dict[str, TensorSource]:
  from flax import serialization  # flax's msgpack array extension types.
  with open(filename, "rb") as f:
    data = f.read()
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as err:  # Damaged bytes fail in msgpack or in flax's array decoding.
    raise _damaged(filename, err) from err
  if not isinstance(tree, Mapping):
    raise _damaged(filename, f"it decodes to a {type(tree).__name__}, not a params dict")
  if set(tree) == {"params"}:
    tree = tree["params"]
  return {name: ArraySource(np.asarray(value), origin=f"{filename}:{name}")
          for name, value in traverse_util.flatten_dict(tree, sep=".").items()}


def _torch_to_numpy(tensor: Any) -> np.ndarray:
  import torch  # Only reached once torch has been imported by `_torch_bin`.
  tensor = tensor.detach().cpu().contiguous()
  if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits.
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _conversion_hint(filename: str) -> str:
  """How to turn a pickle-based torch checkpoint into safetensors, away from prompt_jax."""
  hf_dir = os.path.dirname(os.path.abspath(filename))
  return (f"If the file comes from a source you trust, convert it to safetensors in a "
          f"separate, trusted environment where torch and transformers are installed: "
          f"python -c \"from transformers import T5ForConditionalGeneration as M; "
          f"M.from_pretrained('{hf_dir}').save_pretrained('{hf_dir}')\" (transformers >= "
          f"4.35 writes {SAFETENSORS} beside it, which prompt_jax prefers); otherwise get "
          f"{SAFETENSORS} from the model's publisher.")


def _torch_refusal(filename: str, err: Exception) -> CheckpointError:
  """Our message for a file torch's weights-only loader refused; never torch's advice."""
  text = str(err)
  unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
  recopy = f"If it is damaged, download or copy {os.path.basename(filename)} again."
  if unsafe:
    return CheckpointError(
        f"Refusing {filename}: it holds a Python object of type {unsafe.group(1)}, not only "
        f"tensors; prompt_jax does not unpickle objects, since unpickling can run code. "
        f"{_conversion_hint(filename)}")
  if "weights_only" in text or "Weights only" in text:
    return CheckpointError(
        f"Refusing {filename}: torch's weights-only loader cannot read it, so it is damaged, "
        f"not a PyTorch file, or holds pickled Python objects. {recopy} "
        f"{_conversion_hint(filename)}")
  first_line = text.splitlines()[0] if text else ""
  return CheckpointError(
      f"Cannot read {filename} ({os.path.getsize(filename)} bytes; {type(err).__name__}: "
      f"{first_line}): it is truncated, corrupted or not a PyTorch file. {recopy} Or use "
      f"{SAFETENSORS} instead.")


def _torch_bin(filename: str) -> dict[str, TensorSource]:
  """Reads a pickle-based torch file, only through torch's `weights_only=True` unpickler."""
  try:
    import torch
  except ImportError:
    raise CheckpointError(
        f"{filename} is a pickle-based PyTorch file and torch is not installed; prompt_jax "
        f"reads such files only through torch's weights-only loader. Install torch, or "
        f"convert the file: {_conversion_hint(filename)}") from None
  try:
    state = torch.load(filename, map_location="cpu", weights_only=True)
  except Exception as err:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
    raise _torch_refusal(filename, err) from None  # Torch's text advises an unsafe load.
  if not isinstance(state, Mapping):
    raise CheckpointError(f"{filename} holds a {type(state).__name__}, not a state dict of "
                          f"tensors. {_conversion_hint(filename)}")
  not_tensors = sorted(name for name, t in state.items() if not torch.is_tensor(t))
  if not_tensors:
    raise CheckpointError(f"{filename} holds non-tensor entries {not_tensors[:5]}, not only a "
                          f"state dict of tensors. {_conversion_hint(filename)}")
  return {name: ArraySource(_torch_to_numpy(t), origin=f"{filename}:{name}")
          for name, t in state.items()}


def weight_file(hf_dir: str) -> str | None:
  """The preferred weight file of an HF dir, or None."""
  for name in WEIGHT_FILES:
    if os.path.exists(os.path.join(hf_dir, name)):
      return name
  return None


def raw_tensors(hf_dir: str) -> dict[str, TensorSource]:
  """The tensors of an HF dir by HF name, in the file's layout (unread where possible)."""
  name = weight_file(hf_dir)
  if name is None:
    raise CheckpointError(f"{hf_dir} has {CONFIG} but none of the weight files "
                          f"{list(WEIGHT_FILES)}.")
  path = os.path.join(hf_dir, name)
  if name == SAFETENSORS:
    return _safetensors_file(path)
  if name == FLAX_MSGPACK:
    return _flax_msgpack(path)
  if name == TORCH_BIN:
    return _torch_bin(path)
  raw: dict[str, TensorSource] = {}
  for shard in _index_files(hf_dir, name):
    raw.update(_safetensors_file(shard) if name == SAFETENSORS_INDEX else _torch_bin(shard))
  return raw
