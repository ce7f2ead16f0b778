"""A tiny prompt-tuning run as a separate process (the kill-and-resume test drives it).

Usage: python -m tests.train.resume_script MODEL_DIR TRAIN_STEPS
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from prompt_jax.models import T5Transformer  # noqa: E402
from prompt_jax.prompts import Prompt, init_prompt_params  # noqa: E402
from prompt_jax.train import optimizer as opt_lib  # noqa: E402
from prompt_jax.train import trainer  # noqa: E402
from tests.tiny import copy_task_batches, frozen_params, tiny_config  # noqa: E402


def main(model_dir: str, steps: int) -> None:
  cfg = tiny_config(dropout_rate=0.1)  # Dropout on: its RNG must resume exactly too.
  frozen = frozen_params(cfg)
  prompt = Prompt(4)
  model = T5Transformer(cfg, prompt=prompt)
  init = {"prompt": init_prompt_params(prompt, jax.random.PRNGKey(7), cfg.d_model)}
  result = trainer.train(
      model, frozen, init, rules=opt_lib.PROMPT_TUNING_RULES,
      opt_config=opt_lib.OptimizerConfig(), batches=copy_task_batches,
      cfg=trainer.TrainerConfig(model_dir=model_dir, train_steps=steps, checkpoint_period=2,
                                log_period=1, num_partitions=1, progress_bar=False))
  np.save(os.path.join(model_dir, "final_prompt.npy"), result.trainable["prompt"]["prompt"],
          allow_pickle=False)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
