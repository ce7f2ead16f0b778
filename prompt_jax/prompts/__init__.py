"""Prompt modules (one file per method) and their initializers."""

from prompt_jax.prompts import combine, export, initializers
from prompt_jax.prompts.lester import Prompt, PromptBank, init_prompt_params

__all__ = ["Prompt", "PromptBank", "combine", "export", "initializers", "init_prompt_params"]
