"""The frozen network: T5 family config and Flax encoder-decoder."""

from prompt_jax.models.config import T5Config, mt5_config, t5_1_1_config
from prompt_jax.models.t5 import PromptSeam, T5Transformer

__all__ = ["T5Config", "T5Transformer", "PromptSeam", "t5_1_1_config", "mt5_config"]
