"""Freezing: total classification, split/merge, multi_transform's frozen label, state size."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_jax.prompts import Prompt, init_prompt_params
from prompt_jax.train import optimizer as opt_lib
from tests.tiny import frozen_params, tiny_config


@pytest.fixture(scope="module")
def full_params():
  cfg = tiny_config()
  prompt = init_prompt_params(Prompt(5), jax.random.PRNGKey(1), cfg.d_model)
  return {**frozen_params(cfg), "prompt": prompt}


def test_unclassified_leaf_raises(full_params):
  with pytest.raises(ValueError, match="token_embedder/embedding"):
    opt_lib.label_params(full_params, [(r"^prompt/", "trainable"), (r"^(encoder|decoder)/", "frozen")])


def test_split_and_merge_roundtrip(full_params):
  labels = opt_lib.label_params(full_params, opt_lib.PROMPT_TUNING_RULES)
  trainable, frozen = opt_lib.split_params(full_params, labels)
  assert list(trainable) == ["prompt"]
  assert "prompt" not in frozen and set(frozen) == {"token_embedder", "encoder", "decoder"}
  merged = opt_lib.merge_params(trainable, frozen)
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(full_params)
  with pytest.raises(ValueError, match="both"):
    opt_lib.merge_params(trainable, full_params)


def test_frozen_label_gets_zero_update_and_no_state(full_params):
  """Second guarantee: even handed the full tree, frozen leaves get zero updates."""
  tx = opt_lib.make_optimizer(opt_lib.OptimizerConfig(), opt_lib.PROMPT_TUNING_RULES)
  state = tx.init(full_params)
  grads = jax.tree_util.tree_map(jnp.ones_like, full_params)
  updates, _ = tx.update(grads, state, full_params)
  labels = opt_lib.label_params(full_params, opt_lib.PROMPT_TUNING_RULES)
  _, frozen_updates = opt_lib.split_params(updates, labels)
  trainable_updates, _ = opt_lib.split_params(updates, labels)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree_util.tree_leaves(frozen_updates))
  assert float(jnp.abs(trainable_updates["prompt"]["prompt"]).max()) > 0
  p, d = full_params["prompt"]["prompt"].shape
  # Adafactor state: unfactored v [P, D] plus scalars / size-1 placeholders; nothing O(model).
  assert opt_lib.count_params(state) <= p * d + 16
  assert opt_lib.count_params(full_params) > 20 * p * d


def test_prompt_tuning_train_state_is_o_prompt(full_params):
  labels = opt_lib.label_params(full_params, opt_lib.PROMPT_TUNING_RULES)
  trainable, _ = opt_lib.split_params(full_params, labels)
  tx = opt_lib.make_optimizer(opt_lib.OptimizerConfig(), opt_lib.PROMPT_TUNING_RULES)
  n_state = opt_lib.count_params(tx.init(trainable))
  assert n_state <= opt_lib.count_params(trainable) + 16


def test_model_tuning_rules_train_everything(full_params):
  labels = opt_lib.label_params(full_params, opt_lib.MODEL_TUNING_RULES)
  trainable, frozen = opt_lib.split_params(full_params, labels)
  assert frozen == {} and opt_lib.count_params(trainable) == opt_lib.count_params(full_params)


def test_adafactor_defaults_match_the_paper():
  cfg = opt_lib.OptimizerConfig()
  assert (cfg.learning_rate, cfg.decay_rate, cfg.weight_decay_rate, cfg.clipping_threshold) == (
      0.3, 0.8, 1e-5, 1.0)
  assert not cfg.multiply_by_parameter_scale and not cfg.factored
  assert isinstance(opt_lib.make_optimizer(cfg, opt_lib.PROMPT_TUNING_RULES),
                    optax.GradientTransformation)
  assert np.isclose(opt_lib.MODEL_TUNING_OPTIMIZER.learning_rate, 1e-3)
