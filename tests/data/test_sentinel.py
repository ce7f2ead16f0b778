"""The "span corruption + sentinel" target form: prefixed on the way in, removed on the way out."""

import pytest

from prompt_jax import data as data_lib
from prompt_jax.data import sentinel
from prompt_jax.train import evaluation
from tests.data.data_helpers import mock_examples, run_task, texts
from tests.data.test_superglue_tasks import CASES


@pytest.mark.parametrize("task", ["rte", "boolq", "multirc", "record"])
def test_sentinel_targets_round_trip_through_the_postprocessor(prepared, task):
  tfds_split, split, example, inputs, target = CASES[task]
  name = f"super_glue_{task}_noprefix"
  with mock_examples({tfds_split: [example]}):
    plain = run_task(name, split)
    prefixed = run_task(name + sentinel.SUFFIX, split)
  assert texts(prefixed) == [(inputs.split(" ", 1)[1], f"<extra_id_0> {target}")]
  vocabulary = data_lib.get_mixture_or_task(name).output_features["targets"].vocabulary
  tokens = [int(t) for t in prefixed[0]["targets"]]
  assert tokens[0] == vocabulary.vocab_size - 1  # The first sentinel is one token.
  assert tokens[1:] == [int(t) for t in plain[0]["targets"]]
  plain_task, sentinel_task = evaluation.get_task(name), evaluation.get_task(name + "_sentinel")
  decoded = vocabulary.decode(tokens)
  for is_target in (True, False):
    assert (sentinel_task.postprocess_fn(decoded, example=prefixed[0], is_target=is_target)
            == plain_task.postprocess_fn(target, example=plain[0], is_target=is_target))


def test_the_postprocessor_cuts_at_a_later_sentinel_and_keeps_unprefixed_text():
  assert sentinel.strip_sentinel(b"<extra_id_0> entailment <extra_id_1> x") == "entailment"
  assert sentinel.strip_sentinel("entailment") == "entailment"
  assert sentinel.strip_sentinel("<extra_id_0>") == ""


def test_labels_and_the_mixture_carry_the_sentinel():
  assert data_lib.task_labels("super_glue_rte_noprefix_sentinel") == (
      "<extra_id_0> entailment", "<extra_id_0> not_entailment")
  mixture = data_lib.get_mixture_or_task("super_glue_8_noprefix_sentinel")
  assert len(mixture.tasks) == 8 and all(t.name.endswith("_sentinel") for t in mixture.tasks)
