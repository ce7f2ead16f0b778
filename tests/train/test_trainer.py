"""The training loop end to end: learning, divergence handling, kill-and-resume."""

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt, init_prompt_params, initializers
from prompt_jax.prompts.export import load_peft_adapter
from prompt_jax.data import skill_gym  # noqa: F401  Registers the gym tasks.
from prompt_jax.train import checkpointing
from prompt_jax.train import evaluation
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import trainer
from prompt_jax.train.metrics_writer import read_metrics
from tests.tiny import copy_task_batches, frozen_params, shift_right, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def fixed_answer_batches(start, *, batch_size=8, answer=(7, 9, 11, 1)):
  """Every input must be answered with the same token sequence: learnable by a prompt alone."""
  for b in copy_task_batches(start, batch_size=batch_size):
    tgt = np.tile(np.asarray(answer, np.int32), (batch_size, 1))
    yield {**b, "decoder_target_tokens": tgt, "decoder_input_tokens": shift_right(tgt),
           "decoder_loss_weights": np.ones_like(tgt, np.float32)}


def _prompt_run(model_dir, steps, batches, **cfg_kwargs):
  cfg = tiny_config(d_model=32, d_kv=4)
  frozen = frozen_params(cfg)
  prompt = Prompt(16, initializer=initializers.sampled_vocab(frozen["token_embedder"]["embedding"], 30))
  model = T5Transformer(cfg, prompt=prompt)
  init = {"prompt": init_prompt_params(prompt, jax.random.PRNGKey(3), cfg.d_model)}
  kwargs = dict(model_dir=str(model_dir), train_steps=steps, checkpoint_period=10,
                log_period=1, progress_bar=False)
  kwargs.update(cfg_kwargs)
  return trainer.train(model, frozen, init, rules=opt_lib.PROMPT_TUNING_RULES,
                       opt_config=opt_lib.OptimizerConfig(), batches=batches,
                       cfg=trainer.TrainerConfig(**kwargs)), frozen


def test_prompt_tuning_learns_and_writes_run_outputs(tmp_path):
  result, _ = _prompt_run(tmp_path, 60, fixed_answer_batches, checkpoint_period=20)
  losses = [m["loss"] for m in read_metrics(tmp_path) if m["split"] == "train"]
  assert len(losses) == 60
  assert np.mean(losses[-5:]) < 0.4 * np.mean(losses[:3]), losses
  np.testing.assert_array_equal(np.load(tmp_path / "prompts" / "prompt_60.npy"),
                                result.trainable["prompt"]["prompt"])
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [20, 40, 60]
  np.testing.assert_array_equal(load_peft_adapter(tmp_path / "prompts" / "peft_60"),
                                result.trainable["prompt"]["prompt"])
  assert any((tmp_path / "events" / "train").iterdir())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  _prompt_run(tmp_path, 4, fixed_answer_batches, checkpoint_period=2)

  def poisoned(start):
    for i, b in enumerate(fixed_answer_batches(start), start):
      yield {**b, "decoder_loss_weights": b["decoder_loss_weights"] * (np.nan if i >= 5 else 1)}

  with pytest.raises(trainer.TrainingDivergedError, match=r"step 6.*checkpoint \(step 4\)"):
    _prompt_run(tmp_path, 10, poisoned, checkpoint_period=2)
  ckpt = checkpointing.Checkpointer(tmp_path)
  assert ckpt.latest_step() == 4
  assert np.isfinite(np.load(tmp_path / "prompts" / "prompt_4.npy")).all()
  assert not (tmp_path / "prompts" / "prompt_6.npy").exists()


def _run_script(model_dir, steps):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, "-m", "tests.train.resume_script", str(model_dir),
                           str(steps)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)


# Kill-and-resume bitwise (SIGKILL at random moments, several times):
# tests/reliability/test_faults.py::test_repeated_sigkill_at_random_moments_ends_bitwise_equal.


class OffsetPrompt(Prompt):
  """A prompt split in two: trainable rows plus a frozen offset (a partly frozen subtree)."""

  @nn.compact
  def prompt(self, d_model):
    raw = self.param("prompt", self.initializer, (self.length, d_model))
    offset = self.param("offset", nn.initializers.normal(1.0), (self.length, d_model))
    return raw + offset


OFFSET_GROUPS = opt_lib.ParamGroups(
    rules=((r"^prompt/prompt$", "trainable"), (r"^prompt/offset$", "frozen"), (r".*", "frozen")),
    optimizers={"trainable": opt_lib.OptimizerConfig()})


def _offset_run(model_dir, steps):
  cfg = tiny_config()
  prompt = OffsetPrompt(3)
  model = T5Transformer(cfg, prompt=prompt)
  params = {**frozen_params(cfg), "prompt": init_prompt_params(prompt, jax.random.PRNGKey(1),
                                                               cfg.d_model)}
  trainable, frozen = opt_lib.split_params(params, OFFSET_GROUPS.labels(params))
  assert set(opt_lib._flat(trainable)) == {"prompt/prompt"}
  result = trainer.train(model, frozen, trainable, groups=OFFSET_GROUPS,
                         batches=copy_task_batches,
                         cfg=trainer.TrainerConfig(model_dir=str(model_dir), train_steps=steps,
                                                   checkpoint_period=2, log_period=1,
                                                   progress_bar=False))
  return model, frozen, result


def test_partly_frozen_prompt_subtree_trains_exports_evaluates_and_resumes(tmp_path):
  model, frozen, full = _offset_run(tmp_path / "a", 4)
  _offset_run(tmp_path / "b", 2)
  _, _, resumed = _offset_run(tmp_path / "b", 4)  # Resumes from checkpoint 2.
  np.testing.assert_array_equal(full.trainable["prompt"]["prompt"],
                                resumed.trainable["prompt"]["prompt"])
  # The export is the effective prompt (rows + frozen offset), not the raw parameter.
  exported = np.load(tmp_path / "a" / "prompts" / "prompt_4.npy")
  np.testing.assert_allclose(exported, full.trainable["prompt"]["prompt"]
                             + np.asarray(frozen["prompt"]["offset"]), rtol=1e-6)
  # One evaluator, one deep merge: the split trainable / frozen prompt evaluates like the
  # merged tree, and like the exported file in a plain Prompt.
  batch = next(copy_task_batches(9))
  examples = [{"inputs": row[row > 0], "targets_pretokenized": b"x"}
              for row in batch["encoder_input_tokens"]]
  lengths = {"inputs": batch["encoder_input_tokens"].shape[1], "targets": 4}
  split = evaluation.Evaluator(model, frozen, ["skill_gym_copy"], split="",
                               feature_lengths=lengths, batch_size=4,
                               examples={"skill_gym_copy": examples})
  merged = opt_lib.merge_params(frozen, full.trainable)
  whole = evaluation.Evaluator(model, merged, ["skill_gym_copy"], split="",
                               feature_lengths=lengths, batch_size=4,
                               examples={"skill_gym_copy": examples})
  plain = evaluation.Evaluator(T5Transformer(model.config, prompt=Prompt(3)),
                               {k: v for k, v in frozen.items() if k != "prompt"},
                               ["skill_gym_copy"], split="", feature_lengths=lengths,
                               batch_size=4, examples={"skill_gym_copy": examples})
  a = split.predict(full.trainable, "skill_gym_copy")
  assert any(a), "all predictions empty: the comparison would be vacuous"
  assert a == whole.predict({}, "skill_gym_copy")
  assert a == plain.predict({"prompt": {"prompt": exported}}, "skill_gym_copy")
