"""The model adapter: sown and given loss terms, metric reduction, predict / score."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.models import T5Transformer, decoding
from prompt_jax.prompts import Prompt, init_prompt_params
from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import losses
from tests.tiny import copy_task_batches, frozen_params, tiny_config

CFG = tiny_config()


class SownL2Prompt(Prompt):
  """A prompt that sows an L2 penalty on its rows."""

  @nn.compact
  def prompt(self, d_model):
    p = self.param("prompt", self.initializer, (self.length, d_model))
    self.sow("losses", "l2", 0.5 * jnp.sum(p ** 2))
    return p


def _setup(prompt):
  model = T5Transformer(CFG, prompt=prompt)
  params = {**frozen_params(CFG),
            "prompt": init_prompt_params(prompt, jax.random.PRNGKey(0), CFG.d_model)}
  return model, params, next(copy_task_batches(0))


def test_loss_is_cross_entropy_plus_z_loss_without_extra_terms():
  model, params, batch = _setup(Prompt(3))
  loss, metrics = adapter_lib.ModelAdapter(model, z_loss=1e-4).loss(params, batch)
  logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                       batch["decoder_input_tokens"])
  sums = losses.cross_entropy_sums(logits, batch["decoder_target_tokens"],
                                   batch["decoder_loss_weights"], 1e-4)
  np.testing.assert_allclose(loss, sums["loss_sum"] / sums["weight_sum"], rtol=1e-6)
  reduced = adapter_lib.reduce_metrics(metrics)
  assert set(reduced) == {"loss", "cross_entropy", "z_loss", "token_accuracy"}
  np.testing.assert_allclose(reduced["cross_entropy"] + reduced["z_loss"], reduced["loss"],
                             rtol=1e-6)


def test_sown_and_given_terms_add_to_the_loss_and_are_reported():
  model, params, batch = _setup(SownL2Prompt(3))
  base, _ = adapter_lib.ModelAdapter(T5Transformer(CFG, prompt=Prompt(3))).loss(params, batch)
  # A given term that runs a second forward pass with another prompt (a "teacher").
  teacher = {**params, "prompt": {"prompt": params["prompt"]["prompt"] + 1.0}}

  def kd(ctx: adapter_lib.LossContext):
    return jnp.mean((ctx.logits - ctx.forward(teacher)) ** 2)

  adapter = adapter_lib.ModelAdapter(model, loss_terms=(("kd", kd),))
  loss, metrics = adapter.loss(params, batch)
  reduced = adapter_lib.reduce_metrics(metrics)
  l2 = 0.5 * float(np.sum(np.asarray(params["prompt"]["prompt"]) ** 2))
  np.testing.assert_allclose(reduced["loss/prompt/l2"], l2, rtol=1e-6)
  assert reduced["loss/kd"] > 0
  np.testing.assert_allclose(float(loss), float(base) + l2 + reduced["loss/kd"], rtol=1e-5)
  # The gradient reaches the prompt through both terms.
  grad = jax.grad(lambda p: adapter.loss({**params, "prompt": p}, batch)[0])(params["prompt"])
  assert float(jnp.abs(grad["prompt"]).max()) > 0
  with pytest.raises(ValueError, match="unique"):
    adapter_lib.ModelAdapter(model, loss_terms=(("kd", kd), ("kd", kd)))


def test_reduce_and_add_metrics_keep_sums_and_counts():
  a = {"x": (jnp.asarray(3.0), jnp.asarray(2.0))}
  b = {"x": (jnp.asarray(1.0), jnp.asarray(2.0))}
  assert adapter_lib.reduce_metrics(adapter_lib.add_metrics(a, b)) == {"x": 1.0}
  assert adapter_lib.reduce_metrics({"x": (jnp.asarray(1.0), jnp.asarray(0.0))}) == {"x": 0.0}


def test_predict_and_score_are_the_decoding_functions():
  model, params, batch = _setup(Prompt(3))
  adapter = adapter_lib.ModelAdapter(model)
  tokens = batch["encoder_input_tokens"]
  np.testing.assert_array_equal(
      adapter.predict(params, tokens, max_decode_length=4),
      decoding.greedy_decode(model, params, tokens, max_decode_length=4))
  np.testing.assert_allclose(
      adapter.score(params, tokens, batch["decoder_target_tokens"]),
      decoding.score_sequences(model, params, tokens, batch["decoder_target_tokens"]))
  best = adapter.predict(params, tokens, max_decode_length=4, beam_size=2)
  assert best.shape == (tokens.shape[0], 4)
