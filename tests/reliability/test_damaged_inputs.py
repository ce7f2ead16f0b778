"""Damaged or unsafe inputs give one clear error that names the file and says how to fix it.

Checkpoints: copies of the genuine T5X fixture damaged in tmp_path (truncated / garbage
msgpack, a .zarray that disagrees with the checkpoint file, missing / truncated / garbage
chunks), damaged HF safetensors and flax msgpack files, a damaged Orbax dir, pickled
`pytorch_model.bin` files, and `..` in a path. Prompt files: garbage `.npy` of every kind,
non-finite values, wrong dtypes. Every test also checks that the input was left untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from safetensors.numpy import save_file

import prompt_jax
from prompt_jax.checkpoints import CheckpointError, to_hf_state_dict
from prompt_jax.models import T5Config, T5Transformer
from prompt_jax.prompts import initializers
from prompt_jax.prompts.initializers import PromptFileError

RECOPY = "copy the checkpoint dir again from its source"
SMALL = T5Config(vocab_size=37, d_model=8, d_kv=3, d_ff=16, num_layers=2, num_decoder_layers=3,
                 num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.0)
WI_0 = "target.encoder.layers_0.mlp.wi_0.kernel"  # [4, 8] in one chunk '0.0'.
EMBEDDING = "target.token_embedder.embedding"  # [32128, 4] in 8 chunks '0.0' .. '7.0'.


def _digest(root: pathlib.Path) -> dict[str, str]:
  """{relative path: sha256} of every file under `root` (or of `root` itself)."""
  files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
  return {str(p.relative_to(root) if p != root else p.name):
          hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _raises_unmodified(error: type[Exception], path: pathlib.Path, call) -> str:
  """Runs `call`, expects `error`, checks no file under `path` changed; returns the message."""
  before = _digest(path)
  with pytest.raises(error) as err:
    call()
  assert _digest(path) == before, "a failed load modified its input"
  message = str(err.value)
  assert "weights_only=False" not in message and "allow_pickle=True" not in message, message
  return message


@pytest.fixture
def t5x_copy(t5x_tiny_dir, tmp_path) -> pathlib.Path:
  """A writable copy of the genuine T5X fixture (the shared one is read-only)."""
  dst = tmp_path / "checkpoint_3"
  shutil.copytree(t5x_tiny_dir, dst, copy_function=shutil.copyfile)
  for root, _, _ in os.walk(dst):
    os.chmod(root, 0o755)
  return dst


# --- T5X legacy: the msgpack `checkpoint` file. ---

@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_t5x_msgpack_file_is_named(t5x_copy, damage):
  ckpt = t5x_copy / "checkpoint"
  data = ckpt.read_bytes()
  ckpt.write_bytes({"truncated": data[:len(data) // 2],
                    "garbage": np.random.RandomState(0).bytes(4096), "empty": b""}[damage])
  message = _raises_unmodified(CheckpointError, t5x_copy,
                               lambda: prompt_jax.load_pretrained(t5x_copy))
  assert f"T5X checkpoint file {ckpt} cannot be decoded" in message
  assert "truncated or corrupted" in message and RECOPY in message
  assert "\n" not in message  # One line for the CLI.


def test_t5x_msgpack_of_something_else_is_not_a_checkpoint(t5x_copy):
  (t5x_copy / "checkpoint").write_bytes(serialization.msgpack_serialize([1, 2, 3]))
  message = _raises_unmodified(CheckpointError, t5x_copy,
                               lambda: prompt_jax.load_pretrained(t5x_copy))
  assert "has no optimizer/target (it decodes to a list)" in message


# --- T5X legacy: the zarr arrays. ---

def test_zarray_shape_that_disagrees_with_the_checkpoint_file(t5x_copy):
  zarray = t5x_copy / WI_0 / ".zarray"
  meta = json.loads(zarray.read_text())
  zarray.write_text(json.dumps(dict(meta, shape=[4, 9])))
  message = _raises_unmodified(CheckpointError, t5x_copy, lambda: prompt_jax.load_pretrained(
      t5x_copy, relative_attention_max_distance=8))
  assert (f"zarr array {t5x_copy / WI_0} has shape (4, 9) in its .zarray metadata, but the "
          f"checkpoint file records (4, 8)") in message, message
  assert f"T5X checkpoint {t5x_copy}" in message and RECOPY in message


@pytest.mark.parametrize("array, damage, reason", [
    (EMBEDDING, "missing chunk", "chunk {3, 0} stored at local file"),
    (EMBEDDING, "truncated chunk", "truncated Zlib-compressed stream"),
    (WI_0, "garbage chunk", "inflate() failed"),
    (WI_0, "missing .zarray", ".zarray\" does not exist"),
    (WI_0, "garbage .zarray", "Invalid JSON"),
])
def test_damaged_zarr_array_names_array_and_dir(t5x_copy, array, damage, reason):
  chunk = t5x_copy / array / ("3.0" if array == EMBEDDING else "0.0")
  if damage == "missing chunk":
    chunk.unlink()  # Read as zeros, silently, before: the fill value is null.
  elif damage == "truncated chunk":
    chunk.write_bytes(chunk.read_bytes()[:1000])
  elif damage == "garbage chunk":
    chunk.write_bytes(b"\x00" * 50)
  elif damage == "missing .zarray":
    (t5x_copy / array / ".zarray").unlink()
  else:
    (t5x_copy / array / ".zarray").write_text('{"chunks": [4')
  message = _raises_unmodified(CheckpointError, t5x_copy, lambda: prompt_jax.load_pretrained(
      t5x_copy, relative_attention_max_distance=8))
  verb = "open" if ".zarray" in damage else "read"
  assert f"T5X checkpoint {t5x_copy}: cannot {verb} zarr array {t5x_copy / array}" in message
  assert reason in message and RECOPY in message
  assert "tensorstore_spec" not in message and "\n" not in message


def test_damaged_chunk_is_named_in_a_sharded_load(t5x_tiny_dir, t5x_copy):
  (t5x_copy / EMBEDDING / "5.0").unlink()
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
  flat = traverse_util.flatten_dict(prompt_jax.load_pretrained(
      t5x_tiny_dir, relative_attention_max_distance=8)[1], sep="/")
  sharding = traverse_util.unflatten_dict(  # The [32128, 4] embedding over 'model' (4).
      {p: NamedSharding(mesh, P("model", None) if p == "token_embedder/embedding" else P())
       for p in flat}, sep="/")
  message = _raises_unmodified(CheckpointError, t5x_copy, lambda: prompt_jax.load_pretrained(
      t5x_copy, sharding=sharding, relative_attention_max_distance=8))
  assert f"cannot read zarr array {t5x_copy / EMBEDDING}" in message
  assert "chunk {5, 0}" in message and "is missing" in message


def test_dot_and_dotdot_in_the_path_load(t5x_tiny_dir, monkeypatch):
  _, reference = prompt_jax.load_pretrained(t5x_tiny_dir, relative_attention_max_distance=8)
  parent = t5x_tiny_dir.parent
  monkeypatch.chdir(parent)
  for path in (f"{parent}/../{parent.name}/./{t5x_tiny_dir.name}",  # Absolute.
               f"./{t5x_tiny_dir.name}/../{t5x_tiny_dir.name}"):  # Relative.
    _, params = prompt_jax.load_pretrained(path, relative_attention_max_distance=8)
    for (p, a), b in zip(traverse_util.flatten_dict(params, sep="/").items(),
                         traverse_util.flatten_dict(reference, sep="/").values()):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{path}: {p}")


# --- HF: safetensors, flax msgpack, torch .bin. ---

def _small_hf_state() -> dict[str, np.ndarray]:
  model = T5Transformer(SMALL)
  tokens = jnp.ones((1, 1), jnp.int32)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), tokens, tokens)))["params"]
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), abstract)
  return to_hf_state_dict(params, SMALL)


def _hf_dir(path: pathlib.Path) -> pathlib.Path:
  path.mkdir()
  (path / "config.json").write_text(json.dumps(SMALL.to_hf_dict()))
  return path


@pytest.mark.parametrize("damage", ["truncated", "half", "garbage", "lfs pointer"])
def test_damaged_safetensors_is_named(tmp_path, damage):
  hf_dir = _hf_dir(tmp_path / "hf")
  weights = hf_dir / "model.safetensors"
  save_file(_small_hf_state(), str(weights))
  prompt_jax.load_pretrained(hf_dir)  # The undamaged file loads.
  data = weights.read_bytes()
  weights.write_bytes({"truncated": data[:-10], "half": data[:len(data) // 2],
                       "garbage": np.random.RandomState(0).bytes(500),
                       "lfs pointer": b"version git-lfs spec v1\noid sha256:00\nsize 9\n"
                       }[damage])
  message = _raises_unmodified(CheckpointError, hf_dir,
                               lambda: prompt_jax.load_pretrained(hf_dir))
  assert f"Cannot read {weights} ({len(weights.read_bytes())} bytes; SafetensorError" in message
  if damage == "lfs pointer":
    assert "git lfs pull" in message
  else:
    assert "truncated or corrupted" in message and "copy model.safetensors again" in message


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_flax_msgpack_is_named(tmp_path, damage):
  hf_dir = _hf_dir(tmp_path / "hf")
  weights = hf_dir / "flax_model.msgpack"
  data = serialization.msgpack_serialize(
      traverse_util.unflatten_dict(_small_hf_state(), sep="."))
  weights.write_bytes(data[:len(data) // 3] if damage == "truncated" else
                      np.random.RandomState(1).bytes(300))
  message = _raises_unmodified(CheckpointError, hf_dir,
                               lambda: prompt_jax.load_pretrained(hf_dir))
  assert f"Cannot read {weights}" in message and "copy flax_model.msgpack again" in message


def _record_run(marker: str) -> None:
  """What unpickling the payload below would run: it leaves a marker file."""
  pathlib.Path(marker).write_text("unpickled")


class _Payload:
  """An object whose unpickling calls `_record_run`: proof that nothing was unpickled."""

  def __init__(self, marker: pathlib.Path):
    self.marker = str(marker)

  def __reduce__(self):
    return _record_run, (self.marker,)


def _check_refusal(message: str, weights: pathlib.Path) -> None:
  assert f"Refusing {weights}" in message
  assert "weights_only" not in message and "add_safe_globals" not in message
  assert f"M.from_pretrained('{weights.parent}').save_pretrained('{weights.parent}')" in message
  assert "trusted environment" in message and "model.safetensors" in message


def test_pickled_objects_in_pytorch_bin_are_refused_unrun(tmp_path):
  torch = pytest.importorskip("torch")
  hf_dir = _hf_dir(tmp_path / "hf")
  weights, marker = hf_dir / "pytorch_model.bin", tmp_path / "ran"
  state = {k: torch.from_numpy(v) for k, v in _small_hf_state().items()}
  torch.save(dict(state, payload=_Payload(marker)), weights)
  message = _raises_unmodified(CheckpointError, hf_dir,
                               lambda: prompt_jax.load_pretrained(hf_dir))
  _check_refusal(message, weights)
  assert f"a Python object of type {__name__}._record_run" in message
  assert not marker.exists()


@pytest.mark.parametrize("damage, words", [
    ("truncated zip", ["Cannot read", "truncated, corrupted or not a PyTorch file"]),
    ("garbage", ["Refusing", "weights-only loader cannot read it"]),
])
def test_damaged_pytorch_bin_is_named(tmp_path, damage, words):
  torch = pytest.importorskip("torch")
  hf_dir = _hf_dir(tmp_path / "hf")
  weights = hf_dir / "pytorch_model.bin"
  torch.save({k: torch.from_numpy(v) for k, v in _small_hf_state().items()}, weights)
  data = weights.read_bytes()
  weights.write_bytes(data[:len(data) // 2] if damage == "truncated zip"
                      else np.random.RandomState(2).bytes(300))
  message = _raises_unmodified(CheckpointError, hf_dir,
                               lambda: prompt_jax.load_pretrained(hf_dir))
  assert f"{words[0]} {weights}" in message and words[1] in message, message
  assert "copy pytorch_model.bin again" in message and "weights_only" not in message


def test_pytorch_bin_with_non_tensor_entries_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  hf_dir = _hf_dir(tmp_path / "hf")
  weights = hf_dir / "pytorch_model.bin"
  torch.save({"shared.weight": torch.zeros(37, 8), "epoch": 3}, weights)
  message = _raises_unmodified(CheckpointError, hf_dir,
                               lambda: prompt_jax.load_pretrained(hf_dir))
  assert f"{weights} holds non-tensor entries ['epoch']" in message


# --- Orbax. ---

@pytest.mark.parametrize("damage", ["garbage _METADATA", "truncated array data"])
def test_damaged_orbax_checkpoint_is_named(tmp_path, damage):
  import orbax.checkpoint as ocp
  model = T5Transformer(SMALL)
  tokens = jnp.ones((1, 1), jnp.int32)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), tokens, tokens)))["params"]
  params = jax.tree.map(lambda s: np.ones(s.shape, np.float32), abstract)
  ckpt = tmp_path / "ckpt"
  ocp.PyTreeCheckpointer().save(ckpt, {"params": params})
  if damage == "garbage _METADATA":
    (ckpt / "_METADATA").write_bytes(b"\x00 not json")
  else:
    for data_file in ckpt.glob("**/d/*"):
      data_file.write_bytes(data_file.read_bytes()[:10])
  message = _raises_unmodified(CheckpointError, ckpt, lambda: prompt_jax.load_pretrained(ckpt))
  assert f"Orbax checkpoint {ckpt} is damaged or incomplete" in message
  assert RECOPY.capitalize() in message


# --- Prompt files. ---

@pytest.fixture
def no_pickle_loads(monkeypatch):
  """Fails the test if anything calls np.load with allow_pickle=True."""
  original = np.load

  def load(*args, **kwargs):
    assert not kwargs.get("allow_pickle", False), "np.load(allow_pickle=True)"
    return original(*args, **kwargs)

  monkeypatch.setattr(np, "load", load)


def _truncated_npy(path: pathlib.Path) -> None:
  np.save(path, np.ones((3, 4), np.float32))
  path.write_bytes(path.read_bytes()[:-5])


@pytest.mark.parametrize("write, words", [
    (lambda p: p.write_bytes(np.random.RandomState(0).bytes(256)), ["not a .npy file"]),
    (lambda p: p.write_text("0.1 0.2\n0.3 0.4\n"), ["not a .npy file"]),
    (lambda p: p.write_bytes(b""), ["is empty"]),
    (lambda p: np.savez(p.with_suffix(""), a=np.ones((2, 2))) or
     p.with_suffix(".npz").rename(p), ["an .npz archive"]),
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
     ["holds Python objects (dtype object)", "only numeric arrays are accepted"]),
    (_truncated_npy, ["truncated or damaged", "(3, 4) float32 (48 bytes of data)",
                      "holds 43"]),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage"),
     ["damaged .npy header"]),
    (lambda p: np.save(p, np.arange(12).reshape(3, 4)), ["holds int64 values",
                                                         "floating-point"]),
    (lambda p: np.save(p, np.ones((3, 4), bool)), ["holds bool values"]),
    (lambda p: np.save(p, np.ones((2, 3, 4, 5), np.float32)), ["shape (2, 3, 4, 5)", "[P, D]"]),
], ids=["random_bytes", "text", "empty", "npz", "object_array", "truncated", "bad_header",
        "int", "bool", "3d"])
def test_garbage_prompt_file_is_named(tmp_path, no_pickle_loads, write, words):
  path = tmp_path / "prompt.npy"
  write(path)
  message = _raises_unmodified(PromptFileError, path,
                               lambda: initializers.load_npy_prompt(path))
  assert message.startswith(f"Prompt file {path} "), message
  assert "Cannot load file containing pickled data" not in message
  for word in words:
    assert word in message, (word, message)
  assert issubclass(PromptFileError, ValueError)


def test_non_finite_prompt_is_refused_with_the_count(tmp_path, no_pickle_loads):
  path = tmp_path / "prompt_300.npy"
  prompt = np.zeros((5, 4), np.float32)
  prompt[0, 1], prompt[2, :2], prompt[4, 3] = np.nan, np.inf, -np.inf
  np.save(path, prompt)
  message = _raises_unmodified(PromptFileError, path,
                               lambda: initializers.load_npy_prompt(path))
  assert f"Prompt file {path} has 4 non-finite value(s) (NaN or inf) out of 20" in message
  with pytest.raises(PromptFileError):
    initializers.from_npy(path)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_good_prompt_files_still_load(tmp_path, no_pickle_loads, dtype):
  path = tmp_path / "prompt.npy"
  prompt = np.arange(12, dtype=dtype).reshape(3, 4) / 7
  np.save(path, prompt)
  loaded = initializers.load_npy_prompt(path)
  assert loaded.dtype == dtype
  np.testing.assert_array_equal(loaded, prompt)
  np.save(path, np.asfortranarray(prompt.T))  # Fortran order is still a valid .npy.
  np.testing.assert_array_equal(initializers.load_npy_prompt(path), prompt.T)
