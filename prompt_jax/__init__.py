"""prompt_jax: soft prompt tuning of frozen T5 / mT5 models in JAX / Flax."""

from prompt_jax.checkpoints import load_pretrained

__all__ = ["load_pretrained"]
