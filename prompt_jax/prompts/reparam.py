"""The reparameterised prompt of Philippy et al. (2024), cross-lingual soft prompt tuning.

    P' = LayerNorm(W2 relu(W1 P + b1) + b2)        position-wise over the P rows

Shape letters: P prompt length, D d_model, H the MLP's hidden size (`hidden`).
`P` [P, D] is the raw prompt, W1 [D, H], b1 [H], W2 [H, D], b2 [D]; LayerNorm normalises
each row over D (mean and variance, eps 1e-5 as PyTorch's default, computed in float32)
with a scale and bias [D]. There is no residual (the authors' code has none). The MLP trains
with the prompt; whether the LayerNorm's scale and bias train is a parameter-group rule
(`^prompt/layer_norm/` -> "frozen" fixes them at their init, ones and zeros, as the
authors' code leaves them; see `gin/methods/reparam.gin` and `param_rules`).

What the encoder sees, what `prompt()` returns and what a run exports is `P'` [P, D]: a
plain `Prompt` loaded from the exported `.npy` reproduces the run without the MLP. Training
checkpoints keep the raw prompt and the MLP (every trainable leaf), so resume continues the
reparameterised run itself. Both placements (prefix, suffix before EOS) come from `Prompt`.

Parameters (paths under `prompt/`): `prompt` [P, D], `mlp_in/{kernel [D, H], bias [H]}`,
`mlp_out/{kernel [H, D], bias [D]}`, `layer_norm/{scale [D], bias [D]}`; all replicated.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax.prompts.lester import PROMPT_AXES, Prompt
from prompt_jax.train import optimizer as opt_lib

Array = jax.Array
MLP_AXES = ("prompt_embed", "prompt_mlp")  # Unmapped by the rules: replicated like the prompt.
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the authors' code uses.


class ReparamPrompt(Prompt):
  """A prompt [P, D] passed through a position-wise MLP and a LayerNorm (see module doc).

  Attributes:
    hidden: H, the MLP's hidden size (authors' code default 50; their example 200).
    layer_norm_eps: the LayerNorm epsilon.
    (length, initializer, placement, eos_id: as `Prompt`.)
  """
  hidden: int = 50
  layer_norm_eps: float = LAYER_NORM_EPS

  # The encoder sees one [P, D] table: the exported P' is a plain prompt.
  PEFT_EXPORTABLE = True

  @nn.compact
  def prompt(self, d_model: int) -> Array:
    """The effective prompt P' [P, D]."""
    raw = self.param("prompt", nn.with_logical_partitioning(self.initializer, PROMPT_AXES),
                     (self.length, d_model))  # [P, D]
    h = nn.Dense(self.hidden, dtype=jnp.float32, name="mlp_in",
                 kernel_init=nn.with_logical_partitioning(
                     nn.initializers.lecun_normal(), MLP_AXES),
                 bias_init=nn.with_logical_partitioning(
                     nn.initializers.zeros_init(), MLP_AXES[1:]))(raw)  # [P, H]
    h = nn.relu(h)
    out = nn.Dense(d_model, dtype=jnp.float32, name="mlp_out",
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.lecun_normal(), MLP_AXES[::-1]),
                   bias_init=nn.with_logical_partitioning(
                       nn.initializers.zeros_init(), MLP_AXES[:1]))(h)  # [P, D]
    # Mean-and-variance LayerNorm (not T5's RMS norm), in float32.
    return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=jnp.float32, name="layer_norm",
                        scale_init=nn.with_logical_partitioning(
                            nn.initializers.ones_init(), MLP_AXES[:1]),
                        bias_init=nn.with_logical_partitioning(
                            nn.initializers.zeros_init(), MLP_AXES[:1]))(out)


def param_rules(train_layer_norm: bool = False) -> opt_lib.Rules:
  """Parameter rules of a reparameterised run: the MLP and prompt train, the model is frozen.

  Args:
    train_layer_norm: False fixes the LayerNorm affine at its init (the authors' code).
  """
  ln = opt_lib.TRAINABLE if train_layer_norm else opt_lib.FROZEN
  return ((r"^prompt/layer_norm/", ln), (r"^prompt/", opt_lib.TRAINABLE),
          (r"^(token_embedder|encoder|decoder)/", opt_lib.FROZEN))


def param_groups(train_layer_norm: bool = False,
                 config: opt_lib.OptimizerConfig | None = None) -> opt_lib.ParamGroups:
  """`param_rules` with one optimizer setting for the trainable group."""
  return opt_lib.ParamGroups(param_rules(train_layer_norm),
                             {opt_lib.TRAINABLE: config or opt_lib.OptimizerConfig()})
