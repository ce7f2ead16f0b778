"""Scripts: the skill gym's stand-in for languages (cross-lingual transfer, METHODS.md §2).

Each script writes the 26 Latin letters one to one in other symbols, so a skill in a script
is the Latin skill with its input and output rewritten (the same strings, the same split).
Some scripts share many symbols with the training script ("near"), some none ("distant").
Tasks: `skill_gym_script_<script>_<skill>[_noword]`, registered by `register_scripts`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import seqio
import tensorflow as tf

from prompt_jax.data.skill_gym import (ALPHABETS, TASK_PREFIX, Alphabet, GymConfig, Skill,
                                       examples, get_skill, register_source)

@dataclasses.dataclass(frozen=True)
class Script:
  """The Latin letters written in another script: letter i of Latin is `letters[i]`.

  The mapping is one to one, so a skill in a script is the Latin skill with its input and
  output rewritten; "alphabetical order" is the image of Latin's. Scripts differ in how many
  symbols they share with the training script (Latin): "near" ones keep most letters, the
  "distant" ones share none.

  Attributes:
    name: the script's name (`latin`, `near`, `half`, `upper`, `symbols`).
    letters: 26 distinct symbols, the images of a..z.
    distance: "train", "near" or "distant" (from the training script).
  """

  name: str
  letters: str
  distance: str

  def __post_init__(self):
    if len(self.letters) != 26 or len(set(self.letters)) != 26 or " " in self.letters:
      raise ValueError(f"Script {self.name}: need 26 distinct non-space symbols.")

  def encode(self, latin: str) -> str:
    """Latin text -> this script (every character must be a Latin letter)."""
    return "".join(self.letters[ALPHABETS["latin"].index(c)] for c in latin)

  def decode(self, text: str) -> str:
    return "".join(ALPHABETS["latin"].letters[self.letters.index(c)] for c in text)

  @property
  def alphabet(self) -> Alphabet:
    return Alphabet(f"script_{self.name}", self.letters, self.encode(ALPHABETS["latin"].vowels))

  def shared_with(self, other: "Script") -> int:
    """How many symbols this script and `other` both use."""
    return len(set(self.letters) & set(other.letters))


_LATIN = ALPHABETS["latin"].letters
SCRIPTS: dict[str, Script] = {sc.name: sc for sc in (
    Script("latin", _LATIN, "train"),
    # u..z written as punctuation: 20 of 26 symbols shared with Latin, one byte each.
    Script("near", _LATIN[:20] + "=>?@[]", "near"),
    # n..z written as Greek letters (two bytes each): 13 of 26 shared.
    Script("half", _LATIN[:13] + "αβγδεζηθικλμν", "near"),
    # Nothing shared, one byte each.
    Script("upper", _LATIN.upper(), "distant"),
    Script("symbols", "0123456789!#$%&()*+,-./:;<", "distant"),
)}
TRAIN_SCRIPT = "latin"
# Skills whose output is made of input letters (in any order), so they commute with a
# script's one-to-one mapping: `upper` (case) and `length` (digits) do not qualify.
SCRIPT_SKILLS = ("copy", "reverse", "sort", "shift_1", "rotl_1", "atbash", "evens", "dedupe",
                 "swappairs", "firsthalf")


def _check_script_skill(skill: str | Skill, script: str) -> tuple[Skill, Script]:
  base = get_skill(skill)
  if base.alphabet.name != "latin" or base.family in ("upper", "length"):
    raise ValueError(f"Scripts rewrite Latin skills made of input letters, not {base.name!r}.")
  if script not in SCRIPTS:
    raise KeyError(f"Unknown script {script!r}; scripts: {', '.join(SCRIPTS)}.")
  return base, SCRIPTS[script]


def script_examples(skill: str | Skill, script: str, split: str, n: int, seed: int = 0, *,
                    with_word: bool = True, min_len: int = 3, max_len: int = 8
                    ) -> list[dict[str, str]]:
  """The Latin skill's examples rewritten in `script` (the same strings, the same order).

  Every script shares the Latin split (a Latin string's hash decides it), so a test string
  was never trained on in any script. The task word stays Latin, like the alphabets'.
  """
  base, sc = _check_script_skill(skill, script)
  rows = examples(base, split, n, seed, with_word=False, min_len=min_len, max_len=max_len)
  out = []
  for r in rows:
    text = sc.encode(r["inputs"])
    out.append({"inputs": f"{base.word} {text}" if with_word else text,
                "targets": sc.encode(r["targets"])})
  return out


def script_task_name(skill: str | Skill, script: str, with_word: bool = True) -> str:
  """`skill_gym_script_<script>_<skill>[_noword]`."""
  base, sc = _check_script_skill(skill, script)
  return f"{TASK_PREFIX}script_{sc.name}_{base.name}{'' if with_word else '_noword'}"


def script_feature_lengths(skills: Sequence[str], scripts: Sequence[str],
                           max_len: int = 8) -> dict[str, int]:
  """Token lengths (EOS included) for every (skill, script) task, with the task word."""
  width = max(len(SCRIPTS[s].letters[i].encode("utf-8")) for s in scripts for i in range(26))
  word = max(len(get_skill(k).word) for k in skills)
  return {"inputs": word + 1 + max_len * width + 1, "targets": max_len * width + 1}


@dataclasses.dataclass(frozen=True)
class _ScriptSource:
  skill: str
  script: str
  with_word: bool
  config: GymConfig

  def __call__(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    c = self.config
    rows = script_examples(self.skill, self.script, split, c.num_examples()[split], c.seed,
                           with_word=self.with_word, min_len=c.min_len, max_len=c.max_len)
    return tf.data.Dataset.from_tensor_slices({
        k: tf.constant([r[k] for r in rows], dtype=tf.string) for k in ("inputs", "targets")})


def register_scripts(skills: Sequence[str] = SCRIPT_SKILLS,
                     scripts: Sequence[str] = tuple(SCRIPTS), config: GymConfig = GymConfig(),
                     *, mixture_name: str | None = None) -> list[str]:
  """Registers the with-word and `_noword` tasks of every (skill, script); idempotent.

  Args:
    skills: Latin skills (see SCRIPT_SKILLS).
    scripts: script names.
    config: data sizes, seed and string lengths.
    mixture_name: if set, a mixture of the with-word tasks of every (skill, script): the
      multi-script backbone's data.

  Returns:
    The registered task names.
  """
  names = []
  for script in scripts:
    for skill in skills:
      for with_word in (True, False):
        source = _ScriptSource(get_skill(skill).name, script, with_word, config)
        names.append(register_source(script_task_name(skill, script, with_word), source,
                                      config))
  if mixture_name:
    if mixture_name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(mixture_name)
    seqio.MixtureRegistry.add(mixture_name, [n for n in names if not n.endswith("_noword")],
                              default_rate=1.0)
  return names
