"""PANDA-style KD transfer: the KD term, the frozen teacher, lambda = 0, one weight copy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt, init_prompt_params, initializers, panda
from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import builder
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import trainer
from tests.tiny import copy_task_batches, frozen_params, tiny_config

CFG = tiny_config()
P = 3


def _teacher_array():
  return np.asarray(jax.random.normal(jax.random.PRNGKey(7), (P, CFG.d_model)), np.float32)


def _teacher_module(init=initializers.random_uniform()):
  teacher = _teacher_array()
  return panda.TeacherPrompt(P, initializer=init,
                             teacher_initializer=lambda k, s, d=jnp.float32: jnp.asarray(teacher, d))


def test_kd_mse_matches_numpy_on_fixed_logits():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 3, 5)).astype(np.float32), rng.normal(size=(2, 3, 5)).astype(np.float32)
  w = np.asarray([[1, 1, 0], [1, 0, 0]], np.float32)
  want = sum(w[b, i] * np.mean((s[b, i] - t[b, i]) ** 2) for b in range(2) for i in range(3)) / 3
  np.testing.assert_allclose(panda.kd_mse(s, t, w), want, rtol=1e-6)
  ids = (4, 1)
  want_ids = sum(w[b, i] * np.mean((s[b, i, list(ids)] - t[b, i, list(ids)]) ** 2)
                 for b in range(2) for i in range(3)) / 3
  np.testing.assert_allclose(panda.kd_mse(s, t, w, ids), want_ids, rtol=1e-6)


def test_kd_term_in_the_adapter_is_lambda_times_numpy_mse_of_the_two_forwards():
  module = _teacher_module()
  model = T5Transformer(CFG, prompt=module)
  params = {**frozen_params(CFG), "prompt": init_prompt_params(module, jax.random.PRNGKey(0),
                                                               CFG.d_model)}
  batch = next(copy_task_batches(0))
  apply = lambda prompt: np.asarray(T5Transformer(CFG, prompt=Prompt(P)).apply(
      {"params": {**params, "prompt": {"prompt": prompt}}}, batch["encoder_input_tokens"],
      batch["decoder_input_tokens"]))
  zs, zt = apply(params["prompt"]["prompt"]), apply(params["prompt"]["teacher"])
  w = batch["decoder_loss_weights"]
  mse = float((w * ((zs - zt) ** 2).mean(-1)).sum() / w.sum())
  assert mse > 1e-3  # Student and teacher differ: the check below is not 0 == 0.
  for kd, scale in ((panda.KDLoss(beta=0.5, similarity=0.8, paper_scaling=False), 0.4),
                    (panda.KDLoss(weight=0.1, paper_scaling=True), 0.1 * 0.1 / len(w))):
    _, metrics = adapter_lib.ModelAdapter(model, loss_terms=(("kd", kd),)).loss(params, batch)
    np.testing.assert_allclose(adapter_lib.reduce_metrics(metrics)["loss/kd"], scale * mse,
                               rtol=1e-5)


def _run(tmp, module, loss_terms, groups, steps=4):
  frozen = frozen_params(CFG)
  init_all = init_prompt_params(module, jax.random.PRNGKey(0), CFG.d_model)
  frozen = {**frozen, "prompt": {k: v for k, v in init_all.items() if k != "prompt"}}
  frozen = {k: v for k, v in frozen.items() if v}
  init = {"prompt": {"prompt": init_all["prompt"]}}
  adapter = adapter_lib.ModelAdapter(T5Transformer(CFG, prompt=module), loss_terms=loss_terms)
  result = trainer.train(adapter, frozen, init, groups=groups, batches=copy_task_batches,
                         cfg=trainer.TrainerConfig(model_dir=str(tmp), train_steps=steps,
                                                   checkpoint_period=steps, log_period=1,
                                                   progress_bar=False, enable_dropout=False))
  return result, frozen


def test_teacher_unchanged_and_lambda_zero_equals_plain_prompt_tuning_bitwise(tmp_path):
  kd0 = (("kd", panda.KDLoss(weight=0.0)),)
  res0, frozen = _run(tmp_path / "kd0", _teacher_module(), kd0, panda.param_groups(0.3))
  plain, _ = _run(tmp_path / "plain", Prompt(P, initializer=initializers.random_uniform()), (),
                  opt_lib.PROMPT_TUNING)
  np.testing.assert_array_equal(frozen["prompt"]["teacher"], _teacher_array())
  assert set(res0.trainable["prompt"]) == {"prompt"}  # The teacher never trains.
  np.testing.assert_array_equal(res0.trainable["prompt"]["prompt"],
                                plain.trainable["prompt"]["prompt"])
  # And with lambda > 0 the student moves differently (the term is live).
  res1, frozen1 = _run(tmp_path / "kd1", _teacher_module(), (("kd", panda.KDLoss(weight=5.0)),),
                       panda.param_groups(0.3))
  assert not np.array_equal(res1.trainable["prompt"]["prompt"],
                            plain.trainable["prompt"]["prompt"])
  np.testing.assert_array_equal(frozen1["prompt"]["teacher"], _teacher_array())
  # The export is the student alone.
  np.testing.assert_array_equal(np.load(tmp_path / "kd1" / "prompts" / "prompt_4.npy"),
                                res1.trainable["prompt"]["prompt"])


def test_kd_step_holds_one_copy_of_the_frozen_weights():
  """The KD step's arguments are the plain step's plus the [P, D] teacher table, no more."""
  batch = {k: np.asarray(v) for k, v in next(copy_task_batches(0)).items()}

  def argument_bytes(module, terms, groups):
    setup = builder.build(adapter_lib.ModelAdapter(T5Transformer(CFG, prompt=module),
                                                   loss_terms=terms), groups,
                          builder.make_mesh(1), enable_dropout=False)
    state = setup.abstract_state(setup.abstract_trainable)
    compiled = setup.step_fn.lower(state, setup.abstract_frozen, setup.put_batch(batch)).compile()
    return compiled.memory_analysis().argument_size_in_bytes

  plain = argument_bytes(Prompt(P), (), opt_lib.PROMPT_TUNING)
  kd = argument_bytes(_teacher_module(), (("kd", panda.KDLoss(weight=1.0)),),
                      panda.param_groups(0.3))
  assert kd - plain == P * CFG.d_model * 4


def test_lambda_needs_a_weight_or_a_similarity_and_reads_the_matrix(tmp_path):
  with pytest.raises(panda.PandaError, match="PANDA_LAMBDA"):
    panda.KDLoss()
  with pytest.raises(panda.PandaError, match=">= 0"):
    panda.KDLoss(weight=-1.0)
  csv = tmp_path / "m.csv"
  csv.write_text("source,t1,t2\ns1,0.5,0.25\ns2,1.0,0.75\n")
  assert panda.KDLoss(beta=2.0, similarity_csv=str(csv), source="s2", target="t2").lam() == 1.5
  assert panda.KDLoss(beta=2.0, similarity=-0.3).lam() == 0.0  # Negative s: no KD.
  with pytest.raises(panda.PandaError, match="no entry"):
    panda.KDLoss(similarity_csv=str(csv), source="s3", target="t2")
  with pytest.raises(panda.PandaError, match="label_token_ids"):
    panda.KDLoss(weight=1.0, label_token_ids=(-1,))
