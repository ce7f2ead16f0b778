"""T5X checkpoints: the genuine legacy fixture, written ones (bfloat16 zarr), inference of the
config from shapes, spec rewriting, format detection, and a sharded load on a (2, 4) mesh."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import prompt_jax
from prompt_jax.checkpoints import CheckpointError, detect_format, infer_t5x_config
from prompt_jax.checkpoints.sources import TensorStoreSource
from prompt_jax.checkpoints.t5x import rewrite_spec
from prompt_jax.models import T5Config, T5Transformer

FIXTURE_CONFIG = T5Config(vocab_size=32128, d_model=4, d_kv=2, d_ff=8, num_layers=2,
                          num_decoder_layers=2, num_heads=2, relative_attention_num_buckets=4,
                          relative_attention_max_distance=8, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False)
RELU_TIED = T5Config(vocab_size=37, d_model=8, d_kv=3, d_ff=16, num_layers=2,
                     num_decoder_layers=3, num_heads=4, relative_attention_num_buckets=8,
                     relative_attention_max_distance=20, feed_forward_proj="relu",
                     tie_word_embeddings=True, dropout_rate=0.0)


# --- An independent reader of the fixture: raw msgpack + zarr v2 chunks, no tensorstore. ---

def _ext_hook(code: int, data: bytes):
  if code != 1:  # flax's ndarray extension; others (numpy scalars) are not params.
    return None
  shape, dtype, buf = msgpack.unpackb(data)
  return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)


def _read_zarr(path: pathlib.Path) -> np.ndarray:
  meta = json.loads((path / ".zarray").read_text())
  assert meta["compressor"]["id"] == "gzip" and meta["order"] == "C" and not meta["filters"]
  shape, chunks, dtype = meta["shape"], meta["chunks"], np.dtype(meta["dtype"])
  out = np.zeros(shape, dtype)
  grid = [range(-(-s // c)) for s, c in zip(shape, chunks)]
  for idx in itertools.product(*grid):
    data = np.frombuffer(gzip.decompress((path / ".".join(map(str, idx))).read_bytes()), dtype)
    data = data.reshape(chunks)
    region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
    out[region] = data[tuple(slice(0, r.stop - r.start) for r in region)]
  return out


def _independent_fixture_params(ckpt: pathlib.Path) -> dict[str, np.ndarray]:
  state = msgpack.unpackb((ckpt / "checkpoint").read_bytes(), ext_hook=_ext_hook, raw=False,
                          strict_map_key=False)
  out = {}

  def walk(node, prefix):
    if isinstance(node, np.ndarray):
      out[prefix] = node
    elif "driver" in node:
      out[prefix] = _read_zarr(ckpt / node["kvstore"]["path"])
    else:
      for key, child in node.items():
        walk(child, f"{prefix}/{key}" if prefix else key)

  walk(state["optimizer"]["target"], "")
  return out


def test_fixture_every_leaf_comes_from_the_file(t5x_tiny_dir):
  model, params = prompt_jax.load_pretrained(t5x_tiny_dir, relative_attention_max_distance=8)
  assert model.config == FIXTURE_CONFIG
  loaded = traverse_util.flatten_dict(params, sep="/")
  reference = _independent_fixture_params(t5x_tiny_dir)
  assert sorted(loaded) == sorted(reference)
  assert len(loaded) == 2 * 9 + 2 * 14 + 6  # Layer leaves, embedding, 2 relpos, 2 norms, head.
  for path, value in reference.items():
    assert loaded[path].dtype == jnp.float32, path
    np.testing.assert_array_equal(np.asarray(loaded[path]), value, err_msg=path)
  # The zarr-stored leaves really were zarr (the independent reader took both branches).
  assert reference["token_embedder/embedding"].shape == (32128, 4)
  assert np.std(reference["token_embedder/embedding"]) > 0.1


def test_fixture_shapes_infer_the_config(t5x_tiny_dir):
  _, params = prompt_jax.load_pretrained(t5x_tiny_dir, relative_attention_max_distance=8)
  shapes = {p: v.shape for p, v in traverse_util.flatten_dict(params, sep="/").items()}
  assert infer_t5x_config(shapes) == FIXTURE_CONFIG.replace(relative_attention_max_distance=128)
  del shapes["decoder/logits_dense/kernel"]
  assert infer_t5x_config(shapes).tie_word_embeddings


@pytest.mark.parametrize("override, words", [
    (dict(num_heads=4), ["num_heads=4", "num_heads=2", "encoder/relpos_bias/rel_embedding"]),
    (dict(d_kv=3), ["d_kv=3", "d_kv=2", "attention/query/kernel"]),
    (dict(feed_forward_proj="relu"), ["feed_forward_proj='relu'", "gated MLP"]),
    (dict(tie_word_embeddings=True), ["tie_word_embeddings=True", "logits_dense"]),
    (dict(num_decoder_layers=3), ["num_decoder_layers=3", "num_decoder_layers=2"]),
])
def test_contradicting_override_names_both(t5x_tiny_dir, override, words):
  with pytest.raises(ValueError) as err:
    prompt_jax.load_pretrained(t5x_tiny_dir, **override)
  for word in words:
    assert word in str(err.value), (word, str(err.value))


def test_compatible_overrides_are_taken(t5x_tiny_dir):
  model, _ = prompt_jax.load_pretrained(t5x_tiny_dir, num_heads=2, dropout_rate=0.0,
                                        feed_forward_proj="gated-silu")
  assert model.config.relative_attention_max_distance == 128  # T5's default.
  assert (model.config.dropout_rate, model.config.feed_forward_proj) == (0.0, "gated-silu")
  with pytest.raises(TypeError, match="no_such_field"):
    prompt_jax.load_pretrained(t5x_tiny_dir, no_such_field=1)


def test_detects_file_parent_and_ambiguous_parent(t5x_tiny_dir, tmp_path, caplog):
  assert detect_format(t5x_tiny_dir) == ("t5x", str(t5x_tiny_dir))
  assert detect_format(t5x_tiny_dir / "checkpoint") == ("t5x", str(t5x_tiny_dir))
  with caplog.at_level(logging.WARNING):
    assert detect_format(t5x_tiny_dir.parent) == ("t5x", str(t5x_tiny_dir))
  assert "checkpoint_3" in caplog.text
  for step in (1, 20):
    (tmp_path / f"checkpoint_{step}").mkdir()
  with pytest.raises(CheckpointError, match=r"several checkpoints.*checkpoint_1.*checkpoint_20"):
    detect_format(tmp_path)


def test_rewrite_spec_local_gcs_absolute():
  spec = {"driver": "zarr", "kvstore": {"driver": "gfile", "path": "target.a.kernel"},
          "metadata": {"shape": [2, 3]}}
  local = rewrite_spec(spec, "/ckpts/run/checkpoint_5")
  assert local["kvstore"] == {"driver": "file", "path": "/ckpts/run/checkpoint_5/target.a.kernel"}
  assert local["metadata"] == {"shape": [2, 3]} and spec["kvstore"]["driver"] == "gfile"
  remote = rewrite_spec(spec, "gs://my-bucket/runs/xxl/checkpoint_5")
  assert remote["kvstore"] == {"driver": "gcs", "bucket": "my-bucket",
                               "path": "runs/xxl/checkpoint_5/target.a.kernel"}
  absolute = dict(spec, kvstore={"driver": "gfile", "path": "gs://other/x/target.b"})
  assert rewrite_spec(absolute, "/ignored")["kvstore"] == {
      "driver": "gcs", "bucket": "other", "path": "x/target.b"}
  with pytest.raises(CheckpointError, match="s3"):
    rewrite_spec(dict(spec, kvstore={"driver": "s3", "path": "x"}), "/d")
  # Tensorstore's file driver rejects '.' and '..' components: they are resolved.
  dotted = rewrite_spec(spec, "/ckpts/run/xl/.././checkpoint_5")
  assert dotted["kvstore"] == {"driver": "file", "path": "/ckpts/run/checkpoint_5/target.a.kernel"}


def test_detect_format_resolves_dot_dot(t5x_tiny_dir):
  dotted = f"{t5x_tiny_dir}/../{t5x_tiny_dir.name}"
  assert detect_format(dotted) == ("t5x", str(t5x_tiny_dir))
  assert detect_format(f"{dotted}/./checkpoint") == ("t5x", str(t5x_tiny_dir))


def _random_params(config: T5Config, seed: int = 0) -> dict[str, np.ndarray]:
  """Flat `{t5x_path: array}` of random values with the model's shapes (no compilation)."""
  model = T5Transformer(config)
  tokens = jnp.ones((1, 1), jnp.int32)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), tokens, tokens)))["params"]
  rng = np.random.RandomState(seed)
  return {p: rng.normal(size=s.shape).astype(np.float32)
          for p, s in traverse_util.flatten_dict(abstract, sep="/").items()}


def write_t5x_legacy(step_dir: pathlib.Path, flat: dict[str, np.ndarray], *,
                     dtype: str = "bfloat16", inline_max: int = 16) -> None:
  """Writes a legacy T5X checkpoint: big arrays as zarr via tensorstore, small ones inline."""
  step_dir.mkdir(parents=True)
  target = {}
  for path, value in flat.items():
    value = value.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    if value.size <= inline_max:
      target[path] = value
      continue
    rel = "target." + path.replace("/", ".")
    metadata = {"shape": list(value.shape), "chunks": [max(1, d // 2) for d in value.shape],
                "dtype": "bfloat16" if dtype == "bfloat16" else "<f4",
                "compressor": {"id": "gzip", "level": 1}}
    ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(step_dir / rel)},
             "metadata": metadata}, create=True).result().write(value).result()
    target[path] = {"driver": "zarr", "kvstore": {"driver": "gfile", "path": rel},
                    "metadata": metadata}
  state = {"version": 3, "optimizer": {"target": traverse_util.unflatten_dict(target, sep="/"),
                                       "state": {"step": np.int32(3)}}}
  (step_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(state))


def test_bfloat16_legacy_relu_tied(tmp_path):
  flat = _random_params(RELU_TIED)
  write_t5x_legacy(tmp_path / "checkpoint_3", flat)
  assert any((tmp_path / "checkpoint_3").glob("target.*"))  # Some leaves went to zarr.
  model, params = prompt_jax.load_pretrained(tmp_path, relative_attention_max_distance=20,
                                             dropout_rate=0.0)
  assert model.config == RELU_TIED
  loaded = traverse_util.flatten_dict(params, sep="/")
  assert sorted(loaded) == sorted(flat)
  for path, value in flat.items():
    assert loaded[path].dtype == jnp.float32
    rounded = value.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded[path]), rounded, err_msg=path)
    assert not np.array_equal(rounded, value)  # The bfloat16 really was in the file.
  _, as_bf16 = prompt_jax.load_pretrained(tmp_path, param_dtype=jnp.bfloat16)
  assert {leaf.dtype for leaf in jax.tree.leaves(as_bf16)} == {jnp.dtype(jnp.bfloat16)}


def test_legacy_missing_and_misshaped_tensor(tmp_path):
  flat = _random_params(RELU_TIED)
  del flat["decoder/layers_2/mlp/wo/kernel"]
  flat["encoder/layers_1/attention/value/kernel"] = np.zeros((8, 11), np.float32)
  write_t5x_legacy(tmp_path / "checkpoint_1", flat, dtype="float32")
  with pytest.raises(CheckpointError) as err:
    prompt_jax.load_pretrained(tmp_path / "checkpoint_1")
  message = str(err.value)
  assert "missing     decoder/layers_2/mlp/wo/kernel: expected (16, 8)" in message
  assert "encoder/layers_1/attention/value/kernel: expected (8, 12), found (8, 11)" in message


def _spec(path: str, shape: tuple[int, ...]) -> P:
  """Shards the fixture over a (data=2, model=4) mesh wherever the sizes allow."""
  if path == "token_embedder/embedding":
    return P("model", "data")  # [32128, 4]
  if path == "decoder/logits_dense/kernel":
    return P("data", "model")  # [4, 32128]
  if len(shape) == 2 and shape[1] % 4 == 0:
    return P(None, "model")
  return P()


def test_sharded_load_reads_each_devices_slice(t5x_tiny_dir, monkeypatch):
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
  reads: list[tuple[str, tuple[int, ...]]] = []
  original = TensorStoreSource.read

  def spy(self, index=None):
    out = original(self, index)
    reads.append((self.origin, out.shape))
    return out

  monkeypatch.setattr(TensorStoreSource, "read", spy)

  def sharding(model):
    shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.ones((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32))))
    flat = traverse_util.flatten_dict(shapes["params"], sep="/")
    return traverse_util.unflatten_dict(
        {p: NamedSharding(mesh, _spec(p, s.shape)) for p, s in flat.items()}, sep="/")

  _, sharded = prompt_jax.load_pretrained(t5x_tiny_dir, sharding=sharding,
                                          relative_attention_max_distance=8)
  monkeypatch.setattr(TensorStoreSource, "read", original)
  _, host = prompt_jax.load_pretrained(t5x_tiny_dir, relative_attention_max_distance=8)
  flat_sharded = traverse_util.flatten_dict(sharded, sep="/")
  for path, value in traverse_util.flatten_dict(host, sep="/").items():
    array = flat_sharded[path]
    assert array.sharding == NamedSharding(mesh, _spec(path, value.shape)), path
    np.testing.assert_array_equal(np.asarray(array), np.asarray(value), err_msg=path)
    for shard in array.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(value)[shard.index])
  emb = flat_sharded["token_embedder/embedding"]
  assert emb.addressable_shards[0].data.shape == (8032, 2)
  embedding_reads = [shape for origin, shape in reads if "token_embedder" in origin]
  # 8 distinct [8032, 2] slices, never the whole [32128, 4] table.
  assert embedding_reads and set(embedding_reads) == {(8032, 2)}, embedding_reads
  assert len(embedding_reads) == 8
