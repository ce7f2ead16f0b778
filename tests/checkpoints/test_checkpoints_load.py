"""load_pretrained on HF and Orbax dirs written here (no torch needed): round trips, the loud
errors (missing / extra / mis-shaped tensors, unknown dirs, refused pickles), bfloat16, the
name mapping, and sharded loads on a (2, 4) mesh of emulated devices."""

from __future__ import annotations

import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from safetensors.numpy import save_file

import prompt_jax
from prompt_jax.checkpoints import CheckpointError, hf_to_t5x, to_hf_state_dict
from prompt_jax.checkpoints.sources import SafetensorsSource
from prompt_jax.models import T5Config, T5Transformer

GATED = T5Config(vocab_size=37, d_model=8, d_kv=3, d_ff=16, num_layers=2, num_decoder_layers=3,
                 num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.0)
RELU_TIED = GATED.replace(feed_forward_proj="relu", tie_word_embeddings=True)


def random_params(config: T5Config, seed: int = 0) -> dict:
  """Nested params of random values with the model's shapes (no compilation)."""
  model = T5Transformer(config)
  tokens = jnp.ones((1, 1), jnp.int32)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), tokens, tokens)))["params"]
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), abstract)


def write_hf(path: pathlib.Path, config: T5Config, state: dict[str, np.ndarray]) -> pathlib.Path:
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(config.to_hf_dict()))
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
            str(path / "model.safetensors"))
  return path


def _flat(params) -> dict[str, np.ndarray]:
  return {p: np.asarray(v) for p, v in traverse_util.flatten_dict(params, sep="/").items()}


@pytest.mark.parametrize("config", [GATED, RELU_TIED], ids=["gated_untied", "relu_tied"])
def test_hf_round_trip(tmp_path, config):
  params = random_params(config)
  write_hf(tmp_path, config, to_hf_state_dict(params, config))
  model, loaded = prompt_jax.load_pretrained(tmp_path)
  assert model.config == config
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for path, value in _flat(params).items():
    np.testing.assert_array_equal(_flat(loaded)[path], value, err_msg=path)


def test_hf_names_map_with_the_right_layouts():
  assert hf_to_t5x("decoder.block.2.layer.1.EncDecAttention.o.weight") == (
      "decoder/layers_2/encoder_decoder_attention/out/kernel", "linear")
  assert hf_to_t5x("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight") == (
      "encoder/relpos_bias/rel_embedding", "relpos")
  assert hf_to_t5x("decoder.block.1.layer.2.layer_norm.weight") == (
      "decoder/layers_1/pre_mlp_layer_norm/scale", "norm")
  assert hf_to_t5x("encoder.block.1.layer.1.DenseReluDense.wi_1.kernel") == (
      "encoder/layers_1/mlp/wi_1/kernel", "linear")
  assert hf_to_t5x("shared.embedding") == ("token_embedder/embedding", "embed")
  assert hf_to_t5x("lm_head.weight") == ("decoder/logits_dense/kernel", "linear")
  # Relative tables live only in block 0; encoder blocks have no cross-attention.
  assert hf_to_t5x("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight") is None
  assert hf_to_t5x("encoder.block.0.layer.1.EncDecAttention.q.weight") is None
  assert hf_to_t5x("encoder.block.0.layer.0.SelfAttention.q.bias") is None
  state = to_hf_state_dict(random_params(GATED), GATED)
  assert state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape == (12, 8)  # [out, in]
  assert state["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape == (
      8, 4)  # [N, H]
  assert state["lm_head.weight"].shape == (37, 8)


def test_missing_extra_and_misshaped_tensors_in_one_error(tmp_path):
  state = to_hf_state_dict(random_params(GATED), GATED)
  del state["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
  state["encoder.block.2.layer.0.SelfAttention.q.weight"] = np.zeros((12, 8), np.float32)
  state["encoder.block.0.layer.0.SelfAttention.q.bias"] = np.zeros((12,), np.float32)
  state["decoder.block.0.layer.2.DenseReluDense.wo.weight"] = np.zeros((8, 15), np.float32)
  state["decoder.embed_tokens.weight"] = np.zeros((36, 8), np.float32)
  with pytest.raises(CheckpointError) as err:
    prompt_jax.load_pretrained(write_hf(tmp_path, GATED, state))
  message = str(err.value)
  expected_lines = [
      "missing     encoder/layers_1/mlp/wi_1/kernel: expected (8, 16), not in the checkpoint",
      "extra       encoder/layers_2/attention/query/kernel: found (8, 12)",
      "extra       encoder.block.0.layer.0.SelfAttention.q.bias: found (12,)",
      "mis-shaped  decoder/layers_0/mlp/wo/kernel: expected (16, 8), found (15, 8)",
      "mis-shaped  decoder.embed_tokens.weight: a tied copy of the embedding (37, 8)",
      "5 problem(s)",
  ]
  for line in expected_lines:
    assert line in message, (line, message)


def test_config_override_that_breaks_shapes_is_loud(tmp_path):
  write_hf(tmp_path, GATED, to_hf_state_dict(random_params(GATED), GATED))
  with pytest.raises(CheckpointError, match=r"mlp/wi_0/kernel: expected \(8, 32\), found "
                                            r"\(8, 16\)"):
    prompt_jax.load_pretrained(tmp_path, d_ff=32)


def test_untied_config_without_lm_head_is_missing_unless_hf_ties_it(tmp_path):
  params = random_params(GATED)
  state = to_hf_state_dict(params, GATED)
  del state["lm_head.weight"]
  path = write_hf(tmp_path, GATED, state)  # Old-style config: tie_word_embeddings=false.
  with pytest.raises(CheckpointError, match="missing     decoder/logits_dense/kernel"):
    prompt_jax.load_pretrained(path)
  # transformers >= 5 style: tied head, no rescale -> logits_dense is `shared` transposed.
  hf_config = dict(GATED.to_hf_dict(), tie_word_embeddings=True, scale_decoder_outputs=False)
  (path / "config.json").write_text(json.dumps(hf_config))
  model, loaded = prompt_jax.load_pretrained(path)
  assert not model.config.tie_word_embeddings
  np.testing.assert_array_equal(np.asarray(loaded["decoder"]["logits_dense"]["kernel"]),
                                params["token_embedder"]["embedding"].T)


def test_bfloat16_safetensors_are_cast(tmp_path):
  params = random_params(GATED)
  state = {k: v.astype(ml_dtypes.bfloat16) for k, v in to_hf_state_dict(params, GATED).items()}
  write_hf(tmp_path, GATED, state)
  hf_config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(hf_config, dtype="float16")))
  model, loaded = prompt_jax.load_pretrained(tmp_path)
  assert model.config.dtype == "float32"  # HF's storage dtype is not the activation dtype.
  for path, value in _flat(params).items():
    got = _flat(loaded)[path]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, value.astype(ml_dtypes.bfloat16).astype(np.float32))
  _, as_bf16 = prompt_jax.load_pretrained(tmp_path, param_dtype=jnp.bfloat16)
  assert {leaf.dtype for leaf in jax.tree.leaves(as_bf16)} == {jnp.dtype(jnp.bfloat16)}


def test_unknown_dir_lists_what_was_looked_for(tmp_path):
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(CheckpointError) as err:
    prompt_jax.load_pretrained(tmp_path)
  for word in ("'checkpoint'", "_METADATA", "config.json", "model.safetensors",
               "model.safetensors.index.json", "flax_model.msgpack", "pytorch_model.bin",
               "checkpoint_<step>"):
    assert word in str(err.value), word
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(CheckpointError, match="none of the HF weight files"):
    prompt_jax.load_pretrained(tmp_path)
  with pytest.raises(CheckpointError, match="No such checkpoint dir"):
    prompt_jax.load_pretrained(tmp_path / "nope")


def test_pickle_bin_refused_without_torch(tmp_path, monkeypatch):
  (tmp_path / "config.json").write_text(json.dumps(GATED.to_hf_dict()))
  (tmp_path / "pytorch_model.bin").write_bytes(b"a pickle that must never be opened")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError.
  with pytest.raises(CheckpointError) as err:
    prompt_jax.load_pretrained(tmp_path)
  message = str(err.value)
  assert "torch is not installed" in message and "safetensors" in message
  assert "save_pretrained" in message


def test_orbax_checkpoint_round_trip(tmp_path):
  import orbax.checkpoint as ocp
  params = random_params(GATED)
  bf16 = jax.tree.map(lambda v: v.astype(ml_dtypes.bfloat16), params)
  ocp.PyTreeCheckpointer().save(tmp_path / "checkpoint_7",
                                {"target": bf16, "state": {"step": np.int32(7)}})
  model, loaded = prompt_jax.load_pretrained(tmp_path, relative_attention_max_distance=20,
                                             dropout_rate=0.0)
  assert model.config == GATED
  for path, value in _flat(bf16).items():
    got = _flat(loaded)[path]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, value.astype(np.float32), err_msg=path)


def _mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("data", "model"))


def _gated_specs(path: str) -> P:
  """Specs for GATED: d_model 8 over data (2), H*K 12 / d_ff 16 over model (4)."""
  if path.endswith(("query/kernel", "key/kernel", "value/kernel", "wi_0/kernel",
                    "wi_1/kernel")):
    return P("data", "model")  # [D, H*K] / [D, F]
  if path.endswith(("out/kernel", "wo/kernel")):
    return P("model", "data")  # [H*K, D] / [F, D]
  if path.endswith("rel_embedding"):
    return P("model", None)  # [H, N]
  return P()


def test_sharded_hf_load_reads_slices(tmp_path, monkeypatch):
  params = random_params(GATED)
  write_hf(tmp_path, GATED, to_hf_state_dict(params, GATED))
  mesh = _mesh()
  tree = traverse_util.unflatten_dict(
      {p: NamedSharding(mesh, _gated_specs(p)) for p in _flat(params)}, sep="/")
  reads = []
  original = SafetensorsSource.read
  monkeypatch.setattr(SafetensorsSource, "read",
                      lambda self, index=None: reads.append(self.name) or original(self, index))
  _, loaded = prompt_jax.load_pretrained(tmp_path, sharding={"params": tree})
  for path, value in _flat(params).items():
    array = traverse_util.flatten_dict(loaded, sep="/")[path]
    assert array.sharding == NamedSharding(mesh, _gated_specs(path)), path
    np.testing.assert_array_equal(np.asarray(array), value, err_msg=path)
  q = traverse_util.flatten_dict(loaded, sep="/")["encoder/layers_0/attention/query/kernel"]
  assert {s.data.shape for s in q.addressable_shards} == {(4, 3)}
  # [12, 8] stored, [8, 12] wanted: each of the 8 devices read its own transposed slice.
  assert reads.count("encoder.block.0.layer.0.SelfAttention.q.weight") == 8


def test_single_sharding_and_orbax_sharded(tmp_path):
  import orbax.checkpoint as ocp
  params = random_params(GATED)
  ocp.PyTreeCheckpointer().save(tmp_path / "ck", {"params": params, "opt_state": {}})
  replicated = NamedSharding(_mesh(), P())
  _, loaded = prompt_jax.load_pretrained(tmp_path / "ck", sharding=replicated)
  assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(loaded))
  mesh = _mesh()
  _, loaded = prompt_jax.load_pretrained(
      tmp_path / "ck", sharding=lambda model: traverse_util.unflatten_dict(
          {p: NamedSharding(mesh, _gated_specs(p)) for p in _flat(params)}, sep="/"))
  wo = traverse_util.flatten_dict(loaded, sep="/")["decoder/layers_2/mlp/wo/kernel"]
  assert wo.sharding.spec == P("model", "data")
  np.testing.assert_array_equal(np.asarray(wo),
                                params["decoder"]["layers_2"]["mlp"]["wo"]["kernel"])


def test_sharding_tree_must_match(tmp_path):
  write_hf(tmp_path, GATED, to_hf_state_dict(random_params(GATED), GATED))
  with pytest.raises(ValueError, match="missing.*encoder/encoder_norm/scale"):
    prompt_jax.load_pretrained(tmp_path, sharding={"encoder": {}})
