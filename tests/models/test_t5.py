"""Properties of the T5 module: padding is masked, bf16 runs, the prompt seam shifts positions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.models import T5Config, T5Transformer
from prompt_jax.prompts import Prompt, PromptBank, init_prompt_params
from tests.tiny import frozen_params, tiny_config

ENC = jnp.array([[5, 6, 7, 1, 0, 0], [3, 4, 1, 0, 0, 0]], jnp.int32)
DEC = jnp.array([[0, 9, 8], [0, 2, 3]], jnp.int32)


@pytest.fixture(scope="module", params=["gated-gelu", "relu"])
def setup(request):
  cfg = tiny_config(feed_forward_proj=request.param,
                    tie_word_embeddings=request.param == "relu")
  return cfg, frozen_params(cfg)


def test_contract_shapes_and_dtype(setup):
  cfg, params = setup
  logits = T5Transformer(cfg).apply({"params": params}, ENC, DEC, enable_dropout=False)
  assert logits.shape == (2, 3, cfg.vocab_size) and logits.dtype == jnp.float32


def test_padding_is_masked(setup):
  cfg, params = setup
  model = T5Transformer(cfg)
  base = model.apply({"params": params}, ENC, DEC)
  longer = jnp.pad(ENC, ((0, 0), (0, 3)))  # More padding changes nothing.
  np.testing.assert_allclose(model.apply({"params": params}, longer, DEC), base, atol=1e-5)
  unmasked = ENC.at[0, 4].set(9)  # A real token where padding was changes row 0 only.
  moved = model.apply({"params": params}, unmasked, DEC)
  assert float(jnp.abs(moved[0] - base[0]).max()) > 1e-4
  np.testing.assert_allclose(moved[1], base[1], atol=1e-6)


def test_bfloat16_activations_track_float32(setup):
  cfg, params = setup
  f32 = T5Transformer(cfg).apply({"params": params}, ENC, DEC)
  bf16 = T5Transformer(cfg.replace(dtype="bfloat16")).apply({"params": params}, ENC, DEC)
  assert bf16.dtype == jnp.float32  # Logits are returned in float32 whatever the dtype.
  assert float(jnp.abs(bf16 - f32).max()) < 0.25 * float(jnp.abs(f32).max())


def test_prompt_of_real_token_embeddings_equals_those_tokens_prepended(setup):
  """The seam: a prefix prompt equal to the embeddings of tokens t gives the same logits as
  feeding [t; x] — so the prompt takes encoder positions 0..P-1 and x is shifted by P."""
  cfg, params = setup
  prefix_tokens = jnp.array([11, 12, 13], jnp.int32)
  prompt = {"prompt": params["token_embedder"]["embedding"][prefix_tokens]}
  prompted = T5Transformer(cfg, prompt=Prompt(3)).apply(
      {"params": {**params, "prompt": prompt}}, ENC, DEC)
  concat = jnp.concatenate([jnp.broadcast_to(prefix_tokens, (2, 3)), ENC], axis=1)
  plain = T5Transformer(cfg).apply({"params": params}, concat, DEC)
  np.testing.assert_allclose(prompted, plain, atol=1e-5)


def test_suffix_placement_equals_tokens_inserted_before_eos(setup):
  cfg, params = setup
  ins = jnp.array([11, 12], jnp.int32)
  prompt = {"prompt": params["token_embedder"]["embedding"][ins]}
  prompted = T5Transformer(cfg, prompt=Prompt(2, placement="suffix_before_eos")).apply(
      {"params": {**params, "prompt": prompt}}, ENC, DEC)
  manual = jnp.array([[5, 6, 7, 11, 12, 1, 0, 0], [3, 4, 11, 12, 1, 0, 0, 0]], jnp.int32)
  np.testing.assert_allclose(prompted, T5Transformer(cfg).apply({"params": params}, manual, DEC),
                             atol=1e-5)


def test_prompt_bank_gathers_each_examples_task(setup):
  cfg, params = setup
  bank = PromptBank(num_tasks=3, length=2)
  table = init_prompt_params(bank, jax.random.PRNGKey(0), cfg.d_model)["prompt"]
  assert table.shape == (3, 2, cfg.d_model)
  model = T5Transformer(cfg, prompt=bank)
  mixed = model.apply({"params": {**params, "prompt": {"prompt": table}}}, ENC, DEC,
                      task_ids=jnp.array([2, 0]))
  for row, task in enumerate([2, 0]):
    single = T5Transformer(cfg, prompt=Prompt(2)).apply(
        {"params": {**params, "prompt": {"prompt": table[task]}}}, ENC, DEC)
    np.testing.assert_allclose(mixed[row], single[row], atol=1e-5)
  with pytest.raises(ValueError, match="task_ids"):
    model.apply({"params": {**params, "prompt": {"prompt": table}}}, ENC, DEC)


def test_parameters_carry_logical_axes():
  cfg = tiny_config()
  tokens = jnp.ones((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda: T5Transformer(cfg, prompt=Prompt(2)).init(
      jax.random.PRNGKey(0), tokens, tokens))["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  specs = nn.get_partition_spec(boxed)
  assert tuple(specs["prompt"]["prompt"]) == ("prompt", "prompt_embed")
  assert tuple(specs["decoder"]["logits_dense"]["kernel"]) == ("embed", "vocab")


def test_config_validation():
  with pytest.raises(ValueError, match="feed_forward_proj"):
    T5Config(feed_forward_proj="swish")
  with pytest.raises(ValueError, match="dtype"):
    T5Config(dtype="float16")
