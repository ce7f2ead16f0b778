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
