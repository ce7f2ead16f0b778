"""The reparameterised prompt (Philippy et al.): formula, frozen LayerNorm, export, resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt, combine, init_prompt_params
from prompt_jax.prompts.effective import effective_prompt
from prompt_jax.prompts.reparam import LAYER_NORM_EPS, ReparamPrompt, param_groups
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import trainer
from tests.tiny import copy_task_batches, frozen_params, tiny_config

P, D, H = 3, 8, 5  # Unequal on purpose: a transposed kernel cannot hide.


def _numpy_reparam(params):
  """P' = LayerNorm(W2 relu(W1 P + b1) + b2), row by row, in float64 NumPy."""
  f = {k: np.asarray(v, np.float64) for k, v in _flat(params).items()}
  h = np.maximum(f["prompt"] @ f["mlp_in/kernel"] + f["mlp_in/bias"], 0.0)
  out = h @ f["mlp_out/kernel"] + f["mlp_out/bias"]
  mean = out.mean(-1, keepdims=True)
  var = ((out - mean) ** 2).mean(-1, keepdims=True)
  return (out - mean) / np.sqrt(var + LAYER_NORM_EPS) * f["layer_norm/scale"] + f["layer_norm/bias"]


def _flat(tree):
  return opt_lib._flat(tree)


def _random_params(seed=0):
  """Fixed, non-trivial weights for every leaf (LayerNorm affine too, so it counts)."""
  module = ReparamPrompt(P, hidden=H)
  params = init_prompt_params(module, jax.random.PRNGKey(seed), D)
  rng = np.random.default_rng(seed)
  return module, jax.tree_util.tree_map(
      lambda x: rng.normal(size=x.shape).astype(np.float32), params)


def test_output_equals_a_numpy_reference_of_the_formula():
  module, params = _random_params()
  flat = _flat(params)
  assert {k: v.shape for k, v in flat.items()} == {
      "prompt": (P, D), "mlp_in/kernel": (D, H), "mlp_in/bias": (H,),
      "mlp_out/kernel": (H, D), "mlp_out/bias": (D,), "layer_norm/scale": (D,),
      "layer_norm/bias": (D,)}
  got = module.apply({"params": params}, D, method=module.prompt)
  assert got.shape == (P, D) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), _numpy_reparam(params), rtol=1e-5, atol=1e-5)
  # Not the identity nor a residual: the raw prompt differs from the output.
  assert np.abs(np.asarray(got) - flat["prompt"]).max() > 0.1


def test_default_hidden_is_the_authors_50_and_the_layer_norm_starts_as_identity_affine():
  module = ReparamPrompt(4)
  params = init_prompt_params(module, jax.random.PRNGKey(0), D)
  assert params["mlp_in"]["kernel"].shape == (D, 50)
  np.testing.assert_array_equal(params["layer_norm"]["scale"], np.ones(D, np.float32))
  np.testing.assert_array_equal(params["layer_norm"]["bias"], np.zeros(D, np.float32))


@pytest.mark.parametrize("placement", ["prefix", "suffix_before_eos"])
def test_both_placements_combine_the_reparameterised_rows(placement):
  module, params = _random_params(1)
  module = module.clone(placement=placement)
  embedded = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, D)), jnp.float32)
  tokens = jnp.asarray([[5, 6, 1, 0], [7, 8, 9, 1]], jnp.int32)
  mask = tokens > 0
  out, out_mask = module.apply({"params": params}, embedded, tokens, mask)
  p = module.apply({"params": params}, D, method=module.prompt)
  want, want_mask = combine.combine(placement, p, embedded, tokens, mask)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(out_mask), np.asarray(want_mask))


def _reparam_run(model_dir, steps, *, train_layer_norm=False, seed=1):
  cfg = tiny_config()
  module = ReparamPrompt(P, hidden=H)
  model = T5Transformer(cfg, prompt=module)
  params = {**frozen_params(cfg),
            "prompt": init_prompt_params(module, jax.random.PRNGKey(seed), cfg.d_model)}
  groups = param_groups(train_layer_norm, opt_lib.OptimizerConfig(learning_rate=0.1))
  trainable, frozen = opt_lib.split_params(params, groups.labels(params))
  result = trainer.train(model, frozen, trainable, groups=groups, batches=copy_task_batches,
                         cfg=trainer.TrainerConfig(model_dir=str(model_dir), train_steps=steps,
                                                   checkpoint_period=2, log_period=1,
                                                   progress_bar=False))
  return model, params, frozen, result


def test_fixed_layer_norm_is_bitwise_unchanged_and_the_export_is_p_prime(tmp_path):
  model, init, frozen, result = _reparam_run(tmp_path / "fixed", 4)
  trained = _flat(result.trainable)
  assert not any(k.startswith("prompt/layer_norm") for k in trained), sorted(trained)
  assert {"prompt/prompt", "prompt/mlp_in/kernel", "prompt/mlp_out/bias"} <= set(trained)
  for name in ("scale", "bias"):
    np.testing.assert_array_equal(frozen["prompt"]["layer_norm"][name],
                                  init["prompt"]["layer_norm"][name])
  # The MLP trained with the prompt.
  for key in ("prompt/prompt", "prompt/mlp_in/kernel", "prompt/mlp_out/kernel"):
    assert np.abs(trained[key] - _flat(init)[key]).max() > 0, key
  # The exported prompt is P' from the trained MLP and the fixed LayerNorm.
  merged = opt_lib.merge_params(result.trainable, {"prompt": frozen["prompt"]})
  exported = np.load(tmp_path / "fixed" / "prompts" / "prompt_4.npy", allow_pickle=False)
  np.testing.assert_array_equal(exported, effective_prompt(model, merged))
  np.testing.assert_allclose(exported, _numpy_reparam(merged["prompt"]), rtol=1e-4, atol=1e-5)
  # What the run used is the init affine itself (ones, zeros) bit for bit, not a moved copy.
  fresh = opt_lib.merge_params(result.trainable, {"prompt": {"layer_norm": {
      "scale": np.ones(D, np.float32), "bias": np.zeros(D, np.float32)}}})
  np.testing.assert_array_equal(exported, effective_prompt(model, fresh))
  # With the option on, the same run moves the LayerNorm affine (the test above can fail).
  _, _, frozen_t, trained_ln = _reparam_run(tmp_path / "trained", 4, train_layer_norm=True)
  assert "layer_norm" not in frozen_t.get("prompt", {})
  assert np.abs(trained_ln.trainable["prompt"]["layer_norm"]["scale"] - 1.0).max() > 0


def test_resume_of_a_reparam_run_is_bitwise(tmp_path):
  _, _, _, full = _reparam_run(tmp_path / "a", 6)
  _reparam_run(tmp_path / "b", 2)
  _, _, _, resumed = _reparam_run(tmp_path / "b", 6)  # Resumes from checkpoint 2, MLP included.
  a, b = _flat(full.trainable), _flat(resumed.trainable)
  assert set(a) == set(b) and "prompt/mlp_in/kernel" in a
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  np.testing.assert_array_equal(np.load(tmp_path / "a" / "prompts" / "prompt_6.npy"),
                                np.load(tmp_path / "b" / "prompts" / "prompt_6.npy"))


@pytest.mark.slow
def test_cli_reparam_export_evaluated_with_a_plain_prompt_reproduces_the_run(tmp_path):
  from tests.test_cli import TINY, _prompt_jax
  from tests.test_cli_methods import _args, _metrics, _saved_prompt_params
  task, steps, run = "skill_gym_reverse_noword", 4, tmp_path / "run"
  proc = _prompt_jax("train", *TINY, "--gin_file=runs/prompt_finetune.gin",
                     "--gin_file=methods/reparam.gin", "--gin_file=prompts/random_uniform.gin",
                     *_args(run, task), f"--gin.TRAIN_STEPS={steps}", "--gin.PROMPT_LENGTH=3",
                     "--gin.REPARAM_HIDDEN=6", "--gin.PROMPT_PLACEMENT='suffix_before_eos'",
                     f"--gin.EVAL_PERIOD={steps}", "--gin.CHECKPOINT_PERIOD=2", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = _saved_prompt_params(run, steps)  # The checkpoint keeps the MLP (for resume).
  assert {"prompt", "mlp_in", "mlp_out"} <= set(saved) and "layer_norm" not in saved
  exported = run / "prompts" / f"prompt_{steps}.npy"
  assert np.load(exported).shape == (3, 4)
  eval_dir = tmp_path / "eval"
  proc = _prompt_jax("eval", *TINY, "--gin_file=runs/prompt_eval.gin",
                     *_args(eval_dir, task, "evaluate"), f"--gin.PROMPT_FILE='{exported}'",
                     "--gin.evaluate.placement='suffix_before_eos'", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  final, fresh = _metrics(run, "eval")[-1], _metrics(eval_dir, "eval")[-1]
  keys = [k for k in final if k.startswith(task)]
  assert keys and {k: fresh[k] for k in keys} == {k: final[k] for k in keys}
  assert ((eval_dir / "inference" / f"{task}-eval.jsonl").read_text()
          == (run / "inference" / f"{task}-{steps}.jsonl").read_text())
  config = (run / "config.gin").read_text()
  assert "ReparamPrompt" in config and json.loads((run / "tasks.json").read_text())
