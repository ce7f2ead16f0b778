"""The skill gym: synthetic string skills as offline SeqIO tasks (the embedded default).

A *skill* is a pure, deterministic function of a short random string over an alphabet
(reverse, sort, shift-by-k, ...). Each skill has a *task word*; the backbone is model-tuned
on `skill_gym_mix`, whose inputs read "<word> <string>", so it learns to follow the word.
A soft prompt is then tuned on `skill_gym_<skill>_noword` (the bare string, same target):
the prompt has to select the skill that the word used to select.

Skills come in families; parametric families (shift_k, rotl_k, first_k, ...) give many
related tasks, and every skill exists over several alphabets, the non-Latin ones standing
in for another "language" (Greek and Cyrillic letters are two UTF-8 bytes each, so under
the byte vocabulary they are also a different token set and a different length). The task
word is the same in every alphabet: the skill is the same, only the data's script changes.

  skill name      `reverse`, `shift_3` (Latin); `greek_reverse`, `cyrillic_shift_3`
  task names      `skill_gym_<skill>` ("<word> <input>"), `skill_gym_<skill>_noword`
  mixtures        `skill_gym_mix` (CORE_SKILLS, with words), `skill_gym_all` (all Latin),
                  `skill_gym_<alphabet>_all` for the other alphabets
  scripts         `skill_gym_script_<script>_<skill>[_noword]`: a Latin skill's own strings
                  rewritten one to one in another script (`gym_scripts.register_scripts`),
                  near (sharing most symbols with Latin) or distant (sharing none)

Data is generated, never downloaded. The split of an input string is a hash of the string
alone, so train / validation / test are disjoint within a skill *and across skills*: a test
string was never seen in training under any skill. Generation is seeded by
(skill name, split, seed) and prefix-stable: `examples(..., n=10)` is the first ten of
`examples(..., n=1000)`.

Everything here is a gym result when reported; it is never one of the papers' benchmarks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

# seqio.ByteVocabulary: 0 pad, 1 EOS, 2 UNK, then the 256 byte values offset by 3 -> 259 ids.
VOCAB = seqio.ByteVocabulary()
# The model's vocab_size: 259 rounded up to a multiple of 8. Ids 259..263 never occur in the
# data; the model simply learns never to emit them.
GYM_VOCAB_SIZE = 264
assert VOCAB.vocab_size <= GYM_VOCAB_SIZE, (VOCAB.vocab_size, GYM_VOCAB_SIZE)

OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCAB, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCAB, add_eos=True),
}
SPLITS = ("train", "validation", "test")
# Share of the string space (by hash) that each split owns, in percent.
_SPLIT_PERCENT = {"train": 80, "validation": 10, "test": 10}
TASK_PREFIX = "skill_gym_"
MIXTURE_NAME = "skill_gym_mix"
# Strings are drawn in chunks of this size, so a stream does not depend on how much is asked.
_CHUNK = 256


# ---------------------------------------------------------------------------------------
# Alphabets, families, skills.


@dataclasses.dataclass(frozen=True)
class Alphabet:
  """The letters a skill's inputs are drawn from, in their alphabetical order."""

  name: str
  letters: str
  vowels: str

  def index(self, ch: str) -> int:
    return self.letters.index(ch)

  @property
  def max_bytes(self) -> int:
    """UTF-8 bytes of the widest letter (what one letter costs in tokens)."""
    return max(len(ch.encode("utf-8")) for ch in self.letters)


ALPHABETS: dict[str, Alphabet] = {
    a.name: a for a in (
        Alphabet("latin", "abcdefghijklmnopqrstuvwxyz", "aeiou"),
        # Greek lowercase without the final sigma: 24 letters, 2 bytes each.
        Alphabet("greek", "αβγδεζηθικλμνξοπρστυφχψω", "αεηιουω"),
        # Russian lowercase а..я without ё: 32 letters, 2 bytes each.
        Alphabet("cyrillic", "абвгдежзийклмнопрстуфхцчшщъыьэюя", "аеиоуыэюя"),
    )
}


def _shift(s: str, a: Alphabet, k: int) -> str:
  n = len(a.letters)
  return "".join(a.letters[(a.index(c) + k) % n] for c in s)


def _pshift(s: str, a: Alphabet, k: int) -> str:
  """Shifts the letter at position j by k + j (a running Caesar shift)."""
  n = len(a.letters)
  return "".join(a.letters[(a.index(c) + k + j) % n] for j, c in enumerate(s))


def _rotl(s: str, k: int) -> str:
  k %= len(s)
  return s[k:] + s[:k]


def _dedupe(s: str) -> str:
  """Keeps the first occurrence of each letter."""
  return "".join(dict.fromkeys(s))


def _squeeze(s: str) -> str:
  """Collapses runs of one letter ("aabba" -> "aba")."""
  return "".join(c for j, c in enumerate(s) if j == 0 or c != s[j - 1])


def _swap_pairs(s: str) -> str:
  """Swaps letters 0/1, 2/3, ...; an odd last letter stays."""
  out = []
  for j in range(0, len(s) - 1, 2):
    out += [s[j + 1], s[j]]
  return "".join(out) + (s[-1] if len(s) % 2 else "")


def _sorted(s: str, a: Alphabet, reverse: bool = False) -> str:
  return "".join(sorted(s, key=a.index, reverse=reverse))


SkillFn = Callable[[str, Alphabet, int], str]


@dataclasses.dataclass(frozen=True)
class Family:
  """A skill family: one function, and the parameters that make its member skills.

  Attributes:
    name: the family's name; a member skill is `name` or `name_<k>`.
    word: the task word; a parametric member's word is `word<k>` (e.g. "shift3").
    fn: (string, alphabet, k) -> output; k is 0 for families without parameters.
    params: the parameters of the members, from the alphabet; None for a single skill.
    inputs: "uniform" (letters i.i.d.) or "repeats" (letters from a small pool, so that
      skills about repeated letters are not mostly the identity).
    growth: an upper bound on output letters per input letter (for feature lengths).
  """

  name: str
  word: str
  fn: SkillFn
  params: Callable[[Alphabet], Sequence[int]] | None = None
  inputs: str = "uniform"
  growth: int = 1


def _each_shift(a: Alphabet) -> range:
  return range(1, len(a.letters))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("copy", "copy", lambda s, a, k: s),
    Family("reverse", "reverse", lambda s, a, k: s[::-1]),
    Family("sort", "sort", lambda s, a, k: _sorted(s, a)),
    Family("sortdesc", "sortdesc", lambda s, a, k: _sorted(s, a, reverse=True)),
    Family("atbash", "atbash", lambda s, a, k: "".join(a.letters[-1 - a.index(c)] for c in s)),
    Family("upper", "upper", lambda s, a, k: s.upper()),
    Family("dropvowels", "dropvowels", lambda s, a, k: "".join(c for c in s if c not in a.vowels)),
    Family("keepvowels", "keepvowels", lambda s, a, k: "".join(c for c in s if c in a.vowels)),
    Family("dedupe", "dedupe", lambda s, a, k: _dedupe(s), inputs="repeats"),
    Family("squeeze", "squeeze", lambda s, a, k: _squeeze(s), inputs="repeats"),
    Family("firsthalf", "firsthalf", lambda s, a, k: s[:(len(s) + 1) // 2]),
    Family("secondhalf", "secondhalf", lambda s, a, k: s[(len(s) + 1) // 2:]),
    Family("evens", "evens", lambda s, a, k: s[::2]),
    Family("odds", "odds", lambda s, a, k: s[1::2]),
    Family("swappairs", "swappairs", lambda s, a, k: _swap_pairs(s)),
    Family("double", "double", lambda s, a, k: "".join(c + c for c in s), growth=2),
    Family("mirror", "mirror", lambda s, a, k: s + s[::-1], growth=2),
    Family("twice", "twice", lambda s, a, k: s + s, growth=2),
    Family("min", "min", lambda s, a, k: min(s, key=a.index)),
    Family("max", "max", lambda s, a, k: max(s, key=a.index)),
    Family("length", "length", lambda s, a, k: str(len(s))),
    Family("shift", "shift", _shift, params=_each_shift),
    Family("revshift", "revshift", lambda s, a, k: _shift(s, a, k)[::-1], params=_each_shift),
    Family("pshift", "pshift", _pshift, params=_each_shift),
    Family("rotl", "rotl", lambda s, a, k: _rotl(s, k), params=lambda a: range(1, 5)),
    Family("rotr", "rotr", lambda s, a, k: _rotl(s, -k), params=lambda a: range(1, 5)),
    Family("first", "first", lambda s, a, k: s[:k], params=lambda a: range(1, 4)),
    Family("last", "last", lambda s, a, k: s[-k:], params=lambda a: range(1, 4)),
)}


@dataclasses.dataclass(frozen=True)
class Skill:
  """One skill: a family member over one alphabet. Call it on a string to apply it."""

  name: str
  family: str
  param: int
  alphabet: Alphabet
  word: str

  def __call__(self, s: str) -> str:
    if not s or any(c not in self.alphabet.letters for c in s):
      raise ValueError(f"{self.name}: {s!r} is not a non-empty {self.alphabet.name} string.")
    return FAMILIES[self.family].fn(s, self.alphabet, self.param)


def _make_skills() -> dict[str, Skill]:
  skills = {}
  for a in ALPHABETS.values():
    prefix = "" if a.name == "latin" else f"{a.name}_"
    for f in FAMILIES.values():
      for k in (f.params(a) if f.params else [0]):
        base = f"{f.name}_{k}" if f.params else f.name
        word = f"{f.word}{k}" if f.params else f.word
        skills[prefix + base] = Skill(prefix + base, f.name, k, a, word)
  return skills


SKILLS: dict[str, Skill] = _make_skills()

# The backbone's default mixture: a dozen Latin skills of different kinds that a tiny T5
# learns on CPU in minutes (char maps, reorderings, filters, selections).
CORE_SKILLS = ("copy", "reverse", "sort", "shift_1", "rotl_1", "atbash", "upper",
               "dropvowels", "dedupe", "firsthalf", "evens", "swappairs")


def get_skill(skill: str | Skill) -> Skill:
  """The skill of that name (a Skill passes through); unknown names list the families."""
  if isinstance(skill, Skill):
    return skill
  if skill not in SKILLS:
    raise KeyError(f"Unknown skill {skill!r}. Skills are <family>[_<k>] with an optional "
                   f"alphabet prefix ({', '.join(a for a in ALPHABETS if a != 'latin')}); "
                   f"families: {', '.join(FAMILIES)}.")
  return SKILLS[skill]


def skill_names(alphabet: str | None = "latin", family: str | None = None) -> list[str]:
  """Names of the skills over `alphabet` (None: all), optionally of one family."""
  return [s.name for s in SKILLS.values()
          if (alphabet is None or s.alphabet.name == alphabet)
          and (family is None or s.family == family)]


# ---------------------------------------------------------------------------------------
# Generation.


def _stable_int(text: str) -> int:
  """A 64-bit hash that, unlike hash(), is the same in every process."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def split_of(s: str) -> str:
  """The split that owns input string `s` (a function of the string alone)."""
  bucket = int.from_bytes(
      hashlib.blake2b(s.encode("utf-8"), digest_size=8, person=b"skillgym").digest(),
      "little") % 100
  edge = 0
  for split in SPLITS:
    edge += _SPLIT_PERCENT[split]
    if bucket < edge:
      return split
  raise AssertionError("split percentages do not sum to 100")


def _sample_chunk(rng: np.random.Generator, skill: Skill, min_len: int,
                  max_len: int) -> list[str]:
  """Draws _CHUNK input strings, lengths uniform in [min_len, max_len]."""
  n = len(skill.alphabet.letters)
  lengths = rng.integers(min_len, max_len + 1, size=_CHUNK)
  if FAMILIES[skill.family].inputs == "repeats":
    # Letters come from a per-string pool of ceil(len / 2) distinct letters.
    pools = rng.permuted(np.tile(np.arange(n), (_CHUNK, 1)), axis=1)
    pool_size = np.minimum((lengths + 1) // 2, n)
    picks = rng.integers(0, pool_size[:, None], size=(_CHUNK, max_len))
    codes = np.take_along_axis(pools, picks, axis=1)
  else:
    codes = rng.integers(0, n, size=(_CHUNK, max_len))
  letters = skill.alphabet.letters
  return ["".join(letters[c] for c in row[:length]) for row, length in zip(codes, lengths)]


def _input_stream(skill: Skill, split: str, seed: int, min_len: int,
                  max_len: int) -> Iterator[str]:
  """Endless input strings of `split`, seeded by (skill name, split, seed)."""
  rng = np.random.default_rng([seed, _stable_int(skill.name), SPLITS.index(split)])
  while True:
    for s in _sample_chunk(rng, skill, min_len, max_len):
      if split_of(s) == split:
        yield s


@functools.lru_cache(maxsize=256)
def _inputs(skill_name: str, split: str, n: int, seed: int, min_len: int,
            max_len: int) -> tuple[str, ...]:
  stream = _input_stream(SKILLS[skill_name], split, seed, min_len, max_len)
  return tuple(next(stream) for _ in range(n))


def examples(skill: str | Skill, split: str, n: int, seed: int = 0, *, with_word: bool = True,
             min_len: int = 3, max_len: int = 8) -> list[dict[str, str]]:
  """The first `n` examples of a skill's split: plain Python, for tests and evaluation.

  Args:
    skill: a skill name (see `skill_names`) or Skill.
    split: "train", "validation" or "test".
    n: how many examples.
    seed: data seed (>= 0); the stream is seeded by (skill name, split, seed).
    with_word: inputs are "<word> <string>" if True, the bare string if False.
    min_len: shortest input string, in letters.
    max_len: longest input string, in letters.

  Returns:
    `n` dicts {"inputs": str, "targets": str}; the same arguments give the same list.
  """
  skill = get_skill(skill)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  if not 1 <= min_len <= max_len:
    raise ValueError(f"Need 1 <= min_len <= max_len, got {min_len}, {max_len}.")
  if seed < 0 or n < 0:
    raise ValueError(f"seed and n must be >= 0, got seed={seed}, n={n}.")
  out = []
  for s in _inputs(skill.name, split, n, seed, min_len, max_len):
    out.append({"inputs": f"{skill.word} {s}" if with_word else s, "targets": skill(s)})
  return out


def feature_lengths(skills: Sequence[str | Skill], max_len: int = 8) -> dict[str, int]:
  """Token lengths (EOS included) that fit every example of `skills`: TASK_FEATURE_LENGTHS."""
  skills = [get_skill(s) for s in skills]
  inputs = max(len(s.word) + 1 + max_len * s.alphabet.max_bytes for s in skills) + 1
  targets = max(
      max(FAMILIES[s.family].growth * max_len * s.alphabet.max_bytes, 2) for s in skills) + 1
  return {"inputs": inputs, "targets": targets}


# ---------------------------------------------------------------------------------------
# SeqIO.


def strip_postprocessor(output: str | bytes, example: Mapping | None = None,
                        is_target: bool = False) -> str:
  """Decoded text with surrounding whitespace removed (targets and predictions alike)."""
  del example, is_target
  if isinstance(output, bytes):
    output = output.decode("utf-8", errors="replace")
  return output.strip()


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """{"exact_match": percent (0-100) of predictions equal to their target}."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
  if not targets:
    return {"exact_match": 0.0}
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {"exact_match": 100 * hits / len(targets)}


@dataclasses.dataclass(frozen=True)
class GymConfig:
  """How a skill's SeqIO task generates its data (fixed-size splits, deterministic)."""

  train_examples: int = 20_000
  validation_examples: int = 200
  test_examples: int = 500
  seed: int = 0
  min_len: int = 3
  max_len: int = 8

  def num_examples(self) -> dict[str, int]:
    return {"train": self.train_examples, "validation": self.validation_examples,
            "test": self.test_examples}


@dataclasses.dataclass(frozen=True)
class _GymSource:
  """dataset_fn of a skill task: the generated split as a tf.data.Dataset of strings."""

  skill: str
  with_word: bool
  config: GymConfig

  def __call__(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # The data is fixed by the config; seqio shuffles examples.
    c = self.config
    rows = examples(self.skill, split, c.num_examples()[split], c.seed,
                    with_word=self.with_word, min_len=c.min_len, max_len=c.max_len)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant([r["inputs"] for r in rows], dtype=tf.string),
        "targets": tf.constant([r["targets"] for r in rows], dtype=tf.string),
    })


def task_name(skill: str | Skill, with_word: bool = True) -> str:
  """`skill_gym_<skill>` or `skill_gym_<skill>_noword`."""
  return f"{TASK_PREFIX}{get_skill(skill).name}{'' if with_word else '_noword'}"


# Task name -> the config it was registered with, so re-registering is a no-op.
_REGISTERED: dict[str, GymConfig] = {}


def _register_task(skill: Skill, with_word: bool, config: GymConfig) -> str:
  return register_source(task_name(skill, with_word),
                          _GymSource(skill.name, with_word, config), config)


def register_source(name: str, dataset_fn: Callable, config: GymConfig) -> str:
  """(Re)registers a gym task `name` whose split data `dataset_fn` generates."""
  if _REGISTERED.get(name) == config and name in seqio.TaskRegistry.names():
    return name
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=SPLITS,
                                      num_input_examples=config.num_examples()),
      output_features=OUTPUT_FEATURES,
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=strip_postprocessor,
      metric_fns=[exact_match],
  )
  _REGISTERED[name] = config
  return name


def register_mixture(name: str, skills: Sequence[str | Skill]) -> str:
  """(Re)registers mixture `name`: the with-word tasks of `skills`, equal rates."""
  tasks = [seqio.TaskRegistry.get(task_name(s)) for s in skills]
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, tasks, default_rate=1.0)
  return name


def register_skill_gym(skills: Sequence[str | Skill] | None = None,
                       config: GymConfig = GymConfig(), *,
                       mixture_skills: Sequence[str | Skill] = CORE_SKILLS,
                       mixture_name: str = MIXTURE_NAME) -> list[str]:
  """Registers the gym's SeqIO tasks and mixtures; idempotent, called on import.

  Args:
    skills: skills to register a with-word and a `_noword` task for; None: every skill.
    config: data sizes, seed and string lengths of the tasks.
    mixture_skills: skills of the with-word mixture `mixture_name` (registered too if not
      in `skills`).
    mixture_name: name of that mixture (the backbone's model-tuning data).

  Returns:
    The names of the registered tasks, with-word and `_noword` for each skill.
  """
  wanted = [get_skill(s) for s in (SKILLS if skills is None else skills)]
  names = []
  for skill in wanted:
    names += [_register_task(skill, True, config), _register_task(skill, False, config)]
  for skill in mixture_skills:
    _register_task(get_skill(skill), True, config)
  register_mixture(mixture_name, mixture_skills)
  if skills is None:
    register_mixture(f"{TASK_PREFIX}all", skill_names("latin"))
    for alphabet in ALPHABETS:
      if alphabet != "latin":
        register_mixture(f"{TASK_PREFIX}{alphabet}_all", skill_names(alphabet))
  return names


register_skill_gym()
