"""The skill-gym demo end to end at a reduced step count (the 90 % bar needs `make demo`)."""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from prompt_jax import demo
from prompt_jax.checkpoints import load_pretrained
from prompt_jax.data import skill_gym as gym
from prompt_jax.prompts import init_prompt_params
from prompt_jax.train.metrics_writer import read_metrics

LAST_LINE = re.compile(r"^demo: \S+ exact_match before=\d{1,3}\.\d after=\d{1,3}\.\d$")
# Small enough for about a minute of CPU, mostly XLA compiles; too short to learn the skills.
ARGS = ["--skill", "reverse", "--backbone_skills", "reverse", "--backbone_steps", "8",
        "--prompt_steps", "8", "--prompt_length", "4", "--eval_period", "4",
        "--test_examples", "16", "--no-progress_bar"]


@pytest.fixture
def restore_gym():
  """The demo re-registers gym tasks with its own data sizes; put the defaults back."""
  yield
  gym.register_skill_gym()


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _losses(model_dir) -> list[float]:
  return [r["loss"] for r in read_metrics(model_dir) if r["split"] == "train"]


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path, capsys, restore_gym):
  bb, pc = demo.configs_from_args(demo.parse_args(ARGS))
  cache, run_dir = tmp_path / "cache", tmp_path / "run"
  result = demo.run_demo(bb, pc, cache_root=cache, model_dir=run_dir)

  # The backbone: an HF checkpoint in the cache, named by the settings' hash, no leftovers.
  backbone = cache / bb.key()
  assert result.backbone_dir == backbone
  assert (backbone / "config.json").is_file() and (backbone / "model.safetensors").is_file()
  assert json.loads((backbone / "config.json").read_text())["d_model"] == bb.d_model
  assert sorted(p.name for p in cache.iterdir()) == [bb.key()]  # The .partial dir is gone.
  assert not (backbone / "run" / "checkpoints").exists()
  backbone_losses = _losses(backbone / "run")
  assert backbone_losses[-1] < 0.9 * backbone_losses[0], backbone_losses

  # The prompt run's outputs.
  assert (run_dir / "metrics.jsonl").is_file()
  assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  prompt_file = run_dir / "prompts" / f"prompt_{pc.train_steps}.npy"
  assert np.load(prompt_file, allow_pickle=False).shape == (pc.length, bb.d_model)
  assert (run_dir / "prompts" / "prompt_best.npy").is_file()
  prompt_losses = _losses(run_dir)
  assert min(prompt_losses[1:]) < prompt_losses[0], prompt_losses

  # Only the prompt trained (it moved from its init); the frozen backbone is bitwise the
  # checkpoint's after training.
  assert set(result.run.result.trainable) == {"prompt"}
  embedding = np.asarray(result.run.frozen["token_embedder"]["embedding"])
  init = init_prompt_params(demo.make_prompt(pc, embedding), jax.random.PRNGKey(pc.seed),
                            bb.d_model)["prompt"]
  assert not np.array_equal(result.run.result.trainable["prompt"]["prompt"], init)
  frozen, reloaded = _flat(result.run.frozen), _flat(load_pretrained(backbone)[1])
  assert sorted(frozen) == sorted(reloaded) and len(frozen) > 10
  for path, value in frozen.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(reloaded[path]), err_msg=path)
  assert 0.0 <= result.before <= 100.0 and 0.0 <= result.after <= 100.0  # Percent.

  # The CLI on the same dirs: cached backbone, finished prompt run, the scriptable last line.
  capsys.readouterr()
  assert demo.main([*ARGS, "--cache_dir", str(cache), "--model_dir", str(run_dir)]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert any(line.startswith("backbone: cached at") for line in out), out
  assert LAST_LINE.match(out[-1]), out[-1]
  assert out[-1].startswith("demo: reverse exact_match ")
  assert out[-1].endswith(f"before={result.before:.1f} after={result.after:.1f}"), out[-1]


def test_bad_skill_is_one_clear_error(capsys):
  assert demo.main(["--skill", "revrese"]) == 2
  err = capsys.readouterr().err
  assert "Unknown skill 'revrese'" in err and "families:" in err


def test_gym_rows_become_evaluator_examples():
  (ex,) = demo.as_examples([{"inputs": "reverse abc", "targets": "cba"}])
  assert ex["inputs"].dtype == np.int32 and ex["inputs"][-1] == gym.VOCAB.eos_id
  assert gym.VOCAB.decode(ex["inputs"][:-1].tolist()) == "reverse abc"
  assert ex["targets_pretokenized"] == b"cba"


def test_backbone_key_tracks_settings():
  base = demo.BackboneConfig()
  assert base.key() == demo.BackboneConfig().key()
  assert base.key() != demo.BackboneConfig(train_steps=base.train_steps + 1).key()
  assert base.key() != demo.BackboneConfig(skills=("copy", "reverse")).key()


def test_resuming_a_run_with_other_settings_is_refused(tmp_path):
  bb, pc = demo.BackboneConfig(), demo.PromptConfig()
  demo.prepare_run_dir(tmp_path, bb, pc, overwrite=False)
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "metrics.jsonl").write_text("{}\n")
  demo.prepare_run_dir(tmp_path, bb, dataclasses.replace(pc, train_steps=999), overwrite=False)
  longer = dataclasses.replace(pc, length=pc.length + 1)
  with pytest.raises(demo.DemoError, match=r"other settings \(length\).*--overwrite"):
    demo.prepare_run_dir(tmp_path, bb, longer, overwrite=False)
  demo.prepare_run_dir(tmp_path, bb, longer, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json"]
  demo.prepare_run_dir(tmp_path, bb, longer, overwrite=False)  # Now the record matches.
