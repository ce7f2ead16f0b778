"""PEFT prompt-tuning adapter export: parity with `peft` on the HF model, round trip, errors.

The parity test is the independent check of the prompt's placement: peft prepends the
adapter's rows to HF T5's encoder input embeddings and ones to its attention mask, so equal
logits (1e-5) mean our prefix positions and both extended masks agree with HF + peft. The
model is a random tiny T5 1.1 with unequal sizes (d_model 8, 4 heads x d_kv 3, d_ff 16,
2 + 3 layers, 8 buckets) and an untied head, saved with `save_pretrained` and read with
`load_pretrained`.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Local directories only, never a download.

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

import prompt_jax  # noqa: E402
from prompt_jax.models import T5Transformer  # noqa: E402
from prompt_jax.prompts import Prompt  # noqa: E402
from prompt_jax.prompts import export  # noqa: E402
from tests.tiny import randomize_hf_t5, tiny_config  # noqa: E402

TOL = 1e-5
P = 5
HF_SIZES = dict(vocab_size=37, d_model=8, d_kv=3, d_ff=16, num_layers=2, num_decoder_layers=3,
                num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
ENC_LENGTHS, DEC_LENGTHS = (12, 5, 8), (4, 6, 2)


def _random_prompt(dim: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(P, dim)).astype(np.float32)  # [P, D]


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  """(torch, transformers, peft, HF checkpoint dir) for a random untied T5 1.1."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_SIZES)).eval()
  # transformers >= 5 ties lm_head to shared by default; give the head its own weights.
  model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
  randomize_hf_t5(model)
  path = tmp_path_factory.mktemp("hf_t5_1_1")
  model.save_pretrained(path)
  return torch, transformers, peft, path


def _padded_batch(vocab: int) -> tuple[np.ndarray, np.ndarray]:
  """Encoder tokens [B, L] and decoder inputs [B, T], both right-padded with 0."""
  rng = np.random.default_rng(1)
  enc = rng.integers(2, vocab, (len(ENC_LENGTHS), max(ENC_LENGTHS))).astype(np.int32)
  targets = rng.integers(2, vocab, (len(DEC_LENGTHS), max(DEC_LENGTHS))).astype(np.int32)
  for row, (n_enc, n_dec) in enumerate(zip(ENC_LENGTHS, DEC_LENGTHS)):
    enc[row, n_enc:] = 0
    targets[row, n_dec:] = 0
  dec = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  return enc, dec


def _peft_logits(torch, peft_model, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = peft_model(input_ids=torch.tensor(enc, dtype=torch.long),
                     attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                     decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  return out.logits.numpy()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def test_peft_adapter_matches_prompt_jax_logits(hf_checkpoint, tmp_path):
  torch, transformers, peft, path = hf_checkpoint
  model, frozen = prompt_jax.load_pretrained(path)
  cfg = model.config
  prompt = _random_prompt(cfg.d_model)
  enc, dec = _padded_batch(cfg.vocab_size)
  ours = np.asarray(T5Transformer(cfg, prompt=Prompt(P)).apply(
      {"params": {**frozen, "prompt": {"prompt": jnp.asarray(prompt)}}}, enc, dec))

  adapter = export.export_peft_adapter(prompt, tmp_path / "adapter",
                                       base_model_name_or_path=str(path), config=cfg)
  base = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  peft_model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
  peft_cfg = peft_model.active_peft_config
  assert (peft_cfg.peft_type, peft_cfg.task_type) == ("PROMPT_TUNING", "SEQ_2_SEQ_LM")
  assert (peft_cfg.num_virtual_tokens, peft_cfg.num_transformer_submodules) == (P, 1)
  table = peft_model.prompt_encoder["default"].embedding.weight
  np.testing.assert_array_equal(table.detach().numpy(), prompt)  # peft really holds our rows.

  theirs = _peft_logits(torch, peft_model, enc, dec)
  diff = _max_diff(ours, theirs)
  assert diff < TOL, f"prompt_jax vs peft: max abs diff {diff}"
  assert np.ptp(ours) > 1e-2  # Not a degenerate constant output.

  # The comparison can fail: the same rows in another order (other positions) disagree,
  # and so does the base model without the adapter.
  with torch.no_grad():
    table.copy_(torch.from_numpy(np.ascontiguousarray(prompt[::-1])))
  assert _max_diff(ours, _peft_logits(torch, peft_model, enc, dec)) > 1e-3
  with peft_model.disable_adapter():
    assert _max_diff(ours, _peft_logits(torch, peft_model, enc, dec)) > 1e-3


def test_reads_adapter_saved_by_peft(hf_checkpoint, tmp_path):
  torch, transformers, peft, path = hf_checkpoint
  base = transformers.T5ForConditionalGeneration.from_pretrained(path)
  # peft's own default for seq2seq: num_transformer_submodules=2, a [2P, D] table.
  peft_model = peft.get_peft_model(
      base, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P))
  peft_model.save_pretrained(tmp_path / "by_peft")
  table = peft_model.prompt_encoder["default"].embedding.weight.detach().numpy()
  assert table.shape == (2 * P, HF_SIZES["d_model"])
  loaded = export.load_peft_adapter(tmp_path / "by_peft", config=tiny_config())
  np.testing.assert_array_equal(loaded, table[:P])  # The encoder rows, the only ones used.

  # Our config has exactly the keys peft writes (so peft loads it without warnings).
  ours = export.export_peft_adapter(table[:P], tmp_path / "ours")
  written = json.loads((tmp_path / "by_peft" / export.CONFIG_NAME).read_text())
  assert sorted(json.loads((ours / export.CONFIG_NAME).read_text())) == sorted(written)


def test_round_trip_is_bitwise(tmp_path):
  prompt = _random_prompt(8, seed=3)
  out = export.export_peft_adapter(jnp.asarray(prompt), tmp_path / "a", config=tiny_config())
  assert sorted(os.listdir(out)) == [export.CONFIG_NAME, export.WEIGHTS_NAME]
  loaded = export.load_peft_adapter(out, config=tiny_config())
  assert loaded.dtype == np.float32
  np.testing.assert_array_equal(loaded, prompt)
  cfg = json.loads((out / export.CONFIG_NAME).read_text())
  assert (cfg["num_virtual_tokens"], cfg["token_dim"], cfg["num_transformer_submodules"],
          cfg["num_layers"], cfg["num_attention_heads"]) == (P, 8, 1, 2, 4)

  # Re-exporting replaces the adapter as a whole and leaves no temporary directory behind.
  export.export_peft_adapter(prompt * 2, out)
  np.testing.assert_array_equal(export.load_peft_adapter(out), prompt * 2)
  assert sorted(os.listdir(tmp_path)) == ["a"]


def test_export_rejects_bad_prompts_and_foreign_dirs(tmp_path):
  with pytest.raises(ValueError, match=r"\[P, D\]"):
    export.export_peft_adapter(np.zeros((2, P, 8), np.float32), tmp_path / "a")
  with pytest.raises(ValueError, match="d_model=8"):
    export.export_peft_adapter(np.zeros((P, 6), np.float32), tmp_path / "a",
                               config=tiny_config())
  with pytest.raises(ValueError, match="NaN"):
    export.export_peft_adapter(np.full((P, 8), np.nan, np.float32), tmp_path / "a")
  with pytest.raises(ValueError, match="floating"):
    export.export_peft_adapter(np.zeros((P, 8), np.int32), tmp_path / "a")
  assert not (tmp_path / "a").exists()
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "notes.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="notes.txt"):
    export.export_peft_adapter(_random_prompt(8), tmp_path / "busy")
  assert os.listdir(tmp_path / "busy") == ["notes.txt"]


def _edit_config(adapter, **changes) -> None:
  path = adapter / export.CONFIG_NAME
  cfg = json.loads(path.read_text())
  cfg.update(changes)
  path.write_text(json.dumps(cfg))


def test_load_errors_name_what_is_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match="No PEFT adapter directory"):
    export.load_peft_adapter(tmp_path / "missing")
  adapter = export.export_peft_adapter(_random_prompt(8), tmp_path / "a")

  with pytest.raises(export.AdapterError, match=r"d_model is 6"):
    export.load_peft_adapter(adapter, config=tiny_config(d_model=6))

  _edit_config(adapter, peft_type="LORA")
  with pytest.raises(export.AdapterError, match="peft_type is 'LORA'.*'PROMPT_TUNING'"):
    export.load_peft_adapter(adapter)
  _edit_config(adapter, peft_type="PROMPT_TUNING", task_type="CAUSAL_LM")
  with pytest.raises(export.AdapterError, match="task_type is 'CAUSAL_LM'"):
    export.load_peft_adapter(adapter)
  _edit_config(adapter, task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)
  with pytest.raises(export.AdapterError, match=r"shape \(5, 8\).*\(4, 8\)"):
    export.load_peft_adapter(adapter)
  _edit_config(adapter, num_virtual_tokens=P)
  export.load_peft_adapter(adapter)  # Valid again: each error above came from its edit.

  save_file({"prompt_embeddings": _random_prompt(8), "extra": np.zeros(2, np.float32)},
            str(adapter / export.WEIGHTS_NAME))
  with pytest.raises(export.AdapterError, match="'extra'"):
    export.load_peft_adapter(adapter)
  (adapter / export.WEIGHTS_NAME).write_bytes(b"not safetensors")
  with pytest.raises(export.AdapterError, match="not a readable safetensors"):
    export.load_peft_adapter(adapter)
  (adapter / export.WEIGHTS_NAME).unlink()
  with pytest.raises(FileNotFoundError, match=export.WEIGHTS_NAME):
    export.load_peft_adapter(adapter)
