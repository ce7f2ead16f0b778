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


# ---------------------------------------------------------------------------------------
# Parameter groups.


def _two_group_step(lr_a, lr_b):
  from prompt_jax.train import builder
  from tests.tiny import copy_task_batches
  from tests.train.test_step import _setup
  model, frozen, trainable = _setup()
  params = opt_lib.merge_params(frozen, trainable)
  groups = opt_lib.ParamGroups(
      rules=((r"^prompt/", "prompt"), (r"^encoder/layers_0/mlp/", "mlp0"), (r".*", "frozen")),
      optimizers={"prompt": opt_lib.OptimizerConfig(learning_rate=lr_a),
                  "mlp0": opt_lib.OptimizerConfig(learning_rate=lr_b)})
  train, frz = opt_lib.split_params(params, groups.labels(params))
  setup = builder.build(model, groups, builder.make_mesh(1, jax.devices()[:1]),
                        enable_dropout=False)
  state = setup.init_state(train, seed=0)
  frozen_dev = setup.put_frozen(frz)
  state, _ = setup.step_fn(state, frozen_dev, next(copy_task_batches(0)))
  return train, jax.device_get(state.params), frz, jax.device_get(frozen_dev), groups, params


def test_groups_with_100x_learning_rates_move_100x_apart_and_frozen_stays_bitwise():
  before, after, frz_before, frz_after, groups, params = _two_group_step(0.3, 0.003)
  move = lambda path: float(np.abs(np.asarray(opt_lib._flat(after)[path])
                                   - np.asarray(opt_lib._flat(before)[path])).mean())
  prompt_move = move("prompt/prompt")
  mlp_move = move("encoder/layers_0/mlp/wo/kernel")
  assert prompt_move > 0 and mlp_move > 0
  # Adafactor's first step is lr * (clipped) g / |g|; weight decay (1e-5 * w, not scaled by
  # the learning rate) is the only other term.
  np.testing.assert_allclose(prompt_move / mlp_move, 100.0, rtol=0.02)
  for path, value in opt_lib._flat(frz_before).items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(opt_lib._flat(frz_after)[path]))
  counts = groups.group_counts(params)
  assert counts["prompt"] == 3 * 8 and counts["mlp0"] > 0 and counts["frozen"] > 0


def test_param_groups_are_checked():
  with pytest.raises(ValueError, match=r"\['scale'\] have rules but no optimizer"):
    opt_lib.ParamGroups(((r"^prompt/scale", "scale"), (r".*", "frozen")), {})
  with pytest.raises(ValueError, match="no rule names"):
    opt_lib.ParamGroups(((r".*", "frozen"),), {"extra": opt_lib.OptimizerConfig()})
  with pytest.raises(ValueError, match="bad regex"):
    opt_lib.ParamGroups(((r"(", "a"),), {"a": opt_lib.OptimizerConfig()})
  groups = opt_lib.ParamGroups(((r"^prompt/", "a"),), {"a": opt_lib.OptimizerConfig()})
  with pytest.raises(ValueError, match=r"encoder/w"):
    groups.labels({"prompt": {"p": np.zeros(2)}, "encoder": {"w": np.zeros(2)}})


def test_deep_merge_of_a_split_prompt_subtree():
  a = {"prompt": {"raw": np.zeros(2)}}
  b = {"prompt": {"mix": np.ones(2)}, "encoder": {"w": np.ones(1)}}
  merged = opt_lib.merge_params(a, b)
  assert sorted(opt_lib._flat(merged)) == ["encoder/w", "prompt/mix", "prompt/raw"]
  with pytest.raises(ValueError, match="prompt/raw"):
    opt_lib.merge_params(a, a)
  with pytest.raises(ValueError, match="leaf in one tree"):
    opt_lib.merge_params({"prompt": np.zeros(1)}, {"prompt": {"x": np.zeros(1)}})


def test_adamw_group_warms_up_decays_and_clips(full_params):
  """The IPT authors' AdamW: linear warmup, linear decay to 0, global-norm clipping first."""
  cfg = opt_lib.OptimizerConfig(kind="adamw", learning_rate=1e-2, total_steps=100,
                                warmup_fraction=0.1, max_grad_norm=0.1)
  schedule = opt_lib.warmup_linear_decay(cfg)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10, 55, 100, 120)],
                             [0.0, 5e-3, 1e-2, 5e-3, 0.0, 0.0], atol=1e-9)
  groups = opt_lib.ParamGroups(opt_lib.PROMPT_TUNING_RULES, {opt_lib.TRAINABLE: cfg})
  labels = groups.labels(full_params)
  trainable, _ = opt_lib.split_params(full_params, labels)
  tx = opt_lib.make_optimizer(groups)
  state = tx.init(trainable)
  grads = jax.tree_util.tree_map(lambda x: 10.0 * jnp.ones_like(x), trainable)
  updates, state = tx.update(grads, state, trainable)
  # Step 0 of a warmup has learning rate 0 (as transformers' linear schedule).
  assert float(jnp.abs(updates["prompt"]["prompt"]).max()) == 0.0
  # The first moment saw the clipped gradient: (1 - b1) * g * 0.1 / |g|.
  mu = [x for x in jax.tree_util.tree_leaves(state) if np.shape(x) == np.shape(
      trainable["prompt"]["prompt"])][0]
  np.testing.assert_allclose(float(jnp.linalg.norm(mu)), (1 - cfg.b1) * 0.1, rtol=1e-5)


def test_optimizer_kind_and_schedule_are_checked():
  with pytest.raises(ValueError, match="kind must be one of"):
    opt_lib.OptimizerConfig(kind="sgd")
  with pytest.raises(ValueError, match="total_steps >= 1"):
    opt_lib.OptimizerConfig(kind="adamw")
  with pytest.raises(ValueError, match="shorter than total_steps"):
    opt_lib.OptimizerConfig(kind="adamw", total_steps=10, warmup_steps=10)
