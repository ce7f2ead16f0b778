"""Pretrained checkpoints -> frozen params in T5X layout (T5X legacy / Orbax, HF)."""

from prompt_jax.checkpoints.hf import hf_to_t5x, to_hf_state_dict
from prompt_jax.checkpoints.infer import infer_t5x_config
from prompt_jax.checkpoints.load import detect_format, load_pretrained
from prompt_jax.checkpoints.sources import CheckpointError

__all__ = ["load_pretrained", "detect_format", "to_hf_state_dict", "hf_to_t5x",
           "infer_t5x_config", "CheckpointError"]
