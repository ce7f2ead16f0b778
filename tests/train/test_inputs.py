"""The input pipeline: task ids of mixed batches, deterministic resume."""

import numpy as np
import seqio

from prompt_jax.data import skill_gym as gym
from prompt_jax.train import inputs

MIX = "test_inputs_upper_reverse"
TASKS = [gym.task_name("upper", False), gym.task_name("reverse", False)]


def _register():
  if MIX not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(MIX, TASKS, default_rate=1.0)


def _text(tokens):
  ids = [int(t) for t in tokens if t > 1]
  return gym.VOCAB.decode(ids)


def test_each_example_of_a_mixed_batch_carries_its_tasks_id():
  _register()
  names = inputs.task_names(MIX)
  assert names == sorted(TASKS)
  batches = inputs.seqio_batches(MIX, split="train", batch_size=16,
                                 task_feature_lengths={"inputs": 12, "targets": 10})
  seen = set()
  for _ in range(3):
    batch = next(batches)
    assert batch["task_ids"].shape == (16,) and batch["task_ids"].dtype == np.int32
    for x, y, t in zip(batch["encoder_input_tokens"], batch["decoder_target_tokens"],
                       batch["task_ids"]):
      source, target = _text(x), _text(y)
      skill = names[int(t)]
      expected = source.upper() if skill.endswith("upper_noword") else source[::-1]
      assert target == expected, (skill, source, target)
      seen.add(int(t))
  assert seen == {0, 1}


def test_a_single_task_has_task_id_zero_and_resume_skips_exactly():
  kw = dict(split="train", batch_size=4, task_feature_lengths={"inputs": 12, "targets": 10})
  first = inputs.seqio_batches(TASKS[0], **kw)
  next(first)
  second = next(first)
  resumed = next(inputs.seqio_batches(TASKS[0], start=1, **kw))
  assert not second["task_ids"].any()
  for k in inputs.FEATURES:
    np.testing.assert_array_equal(second[k], resumed[k])


def test_buckets_cut_only_trailing_padding_and_fixed_shapes_keep_the_length():
  kw = dict(split="train", batch_size=4, task_feature_lengths={"inputs": 64, "targets": 32})
  bucketed = next(inputs.seqio_batches(TASKS[0], **kw))
  fixed = next(inputs.seqio_batches(TASKS[0], buckets=inputs.FIXED_SHAPES, **kw))
  assert fixed["encoder_input_tokens"].shape == (4, 64)
  assert fixed["decoder_target_tokens"].shape == (4, 32)
  enc_len = bucketed["encoder_input_tokens"].shape[1]
  dec_len = bucketed["decoder_target_tokens"].shape[1]
  assert enc_len in (16, 32) and dec_len in (16,)  # Gym strings are short.
  for k in inputs.FEATURES:
    cut = enc_len if k == "encoder_input_tokens" else dec_len
    if k == "task_ids":
      np.testing.assert_array_equal(bucketed[k], fixed[k])
      continue
    np.testing.assert_array_equal(bucketed[k], fixed[k][:, :cut])
    assert not fixed[k][:, cut:].any()  # Only padding was cut.
  # The smallest bucket that fits: half of it would not hold the longest row.
  used = int((fixed["encoder_input_tokens"] > 0).sum(1).max())
  assert used <= enc_len and (enc_len == 16 or used > enc_len // 2)


def test_bucket_lengths():
  buckets = inputs.LengthBuckets(min_length=16)
  assert buckets.lengths(512) == (16, 32, 64, 128, 256, 512)
  assert buckets.lengths(100) == (16, 32, 64, 100)
  assert [buckets.bucket(n, 100) for n in (1, 16, 17, 65, 100)] == [16, 16, 32, 100, 100]
  assert inputs.FIXED_SHAPES.lengths(100) == (100,) and inputs.FIXED_SHAPES.bucket(3, 100) == 100


def _padded_copy_batches(start, *, full=16, buckets=inputs.LengthBuckets(min_length=4)):
  """Copy-task batches of lengths varying by batch, padded to `full`, then bucketed."""
  from tests.tiny import copy_task_batches
  i = start
  while True:
    b = next(copy_task_batches(i, batch_size=8, length=(3, 12)[i % 2]))
    enc = np.zeros((8, full), np.int32)
    enc[:, :b["encoder_input_tokens"].shape[1]] = b["encoder_input_tokens"]
    yield inputs.bucket_batch({**b, "encoder_input_tokens": enc}, buckets)
    i += 1


def test_loss_is_the_same_with_and_without_bucketing():
  import jax
  from prompt_jax.models import T5Transformer
  from prompt_jax.prompts import Prompt
  from prompt_jax.train import adapter as adapter_lib
  from tests.tiny import frozen_params, tiny_config
  cfg = tiny_config()
  model = T5Transformer(cfg, prompt=Prompt(3))
  params = {**frozen_params(cfg), "prompt": {"prompt": np.random.default_rng(0).normal(
      0, 1, (3, cfg.d_model)).astype(np.float32)}}
  loss = jax.jit(adapter_lib.ModelAdapter(model).loss)
  for start in (0, 2):  # Short batches (the 4-token bucket).
    bucketed = next(_padded_copy_batches(start))
    fixed = next(_padded_copy_batches(start, buckets=inputs.FIXED_SHAPES))
    assert bucketed["encoder_input_tokens"].shape[1] < fixed["encoder_input_tokens"].shape[1]
    (a, ma), (b, mb) = loss(params, bucketed), loss(params, fixed)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(ma["token_accuracy"][0]), float(mb["token_accuracy"][0]))


def test_training_on_bucketed_batches_resumes_bitwise(tmp_path):
  import jax
  from prompt_jax.models import T5Transformer
  from prompt_jax.prompts import Prompt, init_prompt_params
  from prompt_jax.train import optimizer as opt_lib
  from prompt_jax.train import trainer
  from tests.tiny import frozen_params, tiny_config
  cfg = tiny_config()
  frozen = frozen_params(cfg)
  model = T5Transformer(cfg, prompt=Prompt(3))
  init = {"prompt": init_prompt_params(model.prompt, jax.random.PRNGKey(3), cfg.d_model)}

  def run(model_dir, steps):
    return trainer.train(model, frozen, init, rules=opt_lib.PROMPT_TUNING_RULES,
                         opt_config=opt_lib.OptimizerConfig(), batches=_padded_copy_batches,
                         cfg=trainer.TrainerConfig(model_dir=str(model_dir), train_steps=steps,
                                                   checkpoint_period=2, log_period=1,
                                                   progress_bar=False)).trainable

  straight = run(tmp_path / "a", 4)  # Steps alternate between the 4- and 16-token buckets.
  run(tmp_path / "b", 3)
  resumed = run(tmp_path / "b", 4)  # Continues from its last checkpoint.
  np.testing.assert_array_equal(straight["prompt"]["prompt"], resumed["prompt"]["prompt"])
  assert not np.array_equal(straight["prompt"]["prompt"], init["prompt"]["prompt"])
