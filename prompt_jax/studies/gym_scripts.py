"""The cross-lingual study on the skill gym: scripts stand in for languages.

The backbone (a tiny T5, built and cached by `prompt_jax.demo`'s model-tuning path) is
model-tuned on the with-word tasks of `skills` in *every* script, so it "speaks" all of
them. The study then tunes each setting on the training script's no-word task only
(`skill_gym_script_latin_<skill>_noword`) and evaluates zero-shot on the same skill's
no-word task in every script (near: sharing most symbols with Latin; distant: none).

    prompt-jax xlingual --gin_file=xlingual/gym_scripts.gin     # about 7 min on 2 shared cores (measured)

Everything here is a gym result, never one of the papers' benchmarks.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Sequence



@dataclasses.dataclass(frozen=True)
class GymStudy:
  """The multi-script backbone of the gym study.

  Attributes:
    skills: Latin skills the backbone learns, each in every script.
    scripts: the scripts (the first is the training script of the study).
    train_steps: backbone model-tuning steps.
    max_len: longest input string, in letters.
    train_examples: per (skill, script) task.
    cache_dir: backbone cache root (empty: the demo's, ~/.cache/prompt_jax/skill_gym).
  """
  skills: Sequence[str] = ("copy", "reverse", "shift_1")
  scripts: Sequence[str] = ("latin", "near", "half", "upper", "symbols")
  train_steps: int = 2000
  max_len: int = 6
  train_examples: int = 4000
  cache_dir: str = ""

  def backbone(self):
    """The demo's `BackboneConfig`; its `skills` names every (script, skill) task, so the
    cache key differs from the demo's and from other script sets."""
    from prompt_jax import demo  # Local: the demo pulls in the whole training stack.
    return demo.BackboneConfig(
        skills=tuple(f"script_{sc}_{sk}" for sc in self.scripts for sk in self.skills),
        train_steps=self.train_steps, train_examples=self.train_examples,
        max_len=self.max_len)

  def feature_lengths(self) -> dict[str, int]:
    from prompt_jax.data import gym_scripts as scripts
    return scripts.script_feature_lengths(self.skills, self.scripts, self.max_len)


def register(study: GymStudy) -> list[str]:
  """Registers every (skill, script) task; the with-word ones form the backbone's mixture.

  The mixture is registered under the demo's mixture name, which the demo's backbone
  trainer reads (in this process only).
  """
  from prompt_jax import demo
  from prompt_jax.data import gym_scripts as scripts
  return scripts.register_scripts(study.skills, study.scripts, study.backbone().gym_config(),
                              mixture_name=demo.DEMO_MIXTURE)


def prepare(study: GymStudy, *, log: Callable[[str], None] = print) -> pathlib.Path:
  """Registers the tasks and returns the (cached, else built) backbone's HF checkpoint dir."""
  from prompt_jax import demo
  register(study)
  root = pathlib.Path(study.cache_dir).expanduser() if study.cache_dir else (
      demo.default_cache_root())
  return demo.ensure_backbone(study.backbone(), root, study.feature_lengths(), log=log)


def backbone_reference(study: GymStudy, checkpoint: str | pathlib.Path, skill: str, *,
                       n: int = 200, with_word: bool = True,
                       batch_size: int = 100) -> dict[str, float]:
  """The bare backbone's exact match (%) on `skill`'s test split in every script.

  With the task word this checks that the backbone speaks every script; without it, it is
  the zero-shot baseline that a prompt has to beat.
  """
  from prompt_jax import demo
  from prompt_jax.checkpoints import load_pretrained
  from prompt_jax.data import gym_scripts as scripts
  model, frozen = load_pretrained(checkpoint)
  c = study.backbone().gym_config()
  out = {}
  for script in study.scripts:
    rows = scripts.script_examples(skill, script, "test", n, c.seed, with_word=with_word,
                               min_len=c.min_len, max_len=c.max_len)
    ev = demo.make_evaluator(model, frozen, scripts.script_task_name(skill, script, with_word),
                             rows, study.feature_lengths(), batch_size)
    out[script] = demo.exact_match(ev, {})[0]
  return out
