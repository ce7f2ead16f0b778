"""Prompt initializers, each a Flax-style `init(key, shape, dtype) -> [P, D]` closure.

Initializers that need the frozen model's embedding table [V, D] (sampled vocab, class
labels, from string) capture it when built, after the pretrained checkpoint is loaded, so
the prompt starts from the *pretrained* embeddings, never from a random init of them.

Defaults follow Lester et al. (2021) and its reference implementation:
  random_uniform()          U[-0.5, 0.5]  (the paper)
  reference_uniform()       U[0, 0.5)     (the reference code's default random init)
  sampled_vocab(E)          rows of E drawn from its first 5,000 rows, without replacement
  class_labels(E, ids)      row i = mean embedding of label i's sub-tokens; the rest sampled vocab
  from_string(E, ids)       the embedded token ids of a string; the rest sampled vocab
  from_npy(path)            a saved [P, D] prompt (np.load with allow_pickle=False)
  FromRun(model_dir)        a source run's exported prompt (best on validation, else the
                            latest step): prompt transfer (PoT) from a run's model dir

The same initializers exist as small frozen dataclasses (`RandomUniform`, `ReferenceUniform`,
`SampledVocab`, `ClassLabels`, `FromString`, `FromFile`), the objects gin binds
(`prompts.Prompt.initializer = @initializers.ClassLabels()`). Those that need the pretrained
embedding are specs: `spec.bind(Pretrained(embedding, vocabulary))` returns the initializer,
and `bind_initializers(prompt_module, pretrained)` binds every spec a module holds once the
checkpoint is loaded.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]
DEFAULT_POPULATION = 5000


def _check_2d(shape: Sequence[int]) -> tuple[int, int]:
  if len(shape) != 2:
    raise ValueError(f"Prompt initializers build [P, D] arrays; asked for shape {tuple(shape)}.")
  return int(shape[0]), int(shape[1])


def random_uniform(minval: float = -0.5, maxval: float = 0.5) -> Initializer:
  """U[minval, maxval): the paper's random init is U[-0.5, 0.5]."""

  def init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    return jax.random.uniform(key, tuple(shape), dtype, minval, maxval)

  return init


def reference_uniform() -> Initializer:
  """U[0, 0.5): the random init the reference implementation uses by default."""
  return random_uniform(0.0, 0.5)


def _check_embedding(embedding: Array | np.ndarray, d: int) -> None:
  if embedding.ndim != 2 or embedding.shape[1] != d:
    raise ValueError(f"Embedding table must be [V, D={d}], got {tuple(embedding.shape)}.")


def sampled_vocab(embedding: Array | np.ndarray,
                  population: int = DEFAULT_POPULATION) -> Initializer:
  """Rows of the embedding table drawn without replacement from its first `population` rows."""

  def init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    p, d = _check_2d(shape)
    _check_embedding(embedding, d)
    pool = min(population, embedding.shape[0])
    if p > pool:
      raise ValueError(f"Cannot sample {p} distinct rows from a population of {pool}; "
                       "use a larger population or a shorter prompt.")
    rows = jax.random.choice(key, pool, (p,), replace=False)
    return jnp.asarray(embedding)[rows].astype(dtype)

  return init


def _with_fallback(head: Array, key: Array, shape: Sequence[int], dtype,
                   fallback: Initializer, what: str) -> Array:
  p, d = _check_2d(shape)
  if head.shape[0] > p:
    raise ValueError(f"{what} needs {head.shape[0]} prompt rows but the prompt has only {p}; "
                     "increase the prompt length.")
  if head.shape[0] == p:
    return head.astype(dtype)
  rest = fallback(key, (p - head.shape[0], d), dtype)
  return jnp.concatenate([head.astype(dtype), rest], axis=0)


def class_labels(embedding: Array | np.ndarray, label_token_ids: Sequence[Sequence[int]],
                 fallback: Initializer | None = None) -> Initializer:
  """Row i is the mean embedding of label i's sub-tokens; remaining rows from `fallback`.

  Args:
    embedding: the frozen model's embedding table [V, D].
    label_token_ids: token ids of each class label string (no EOS), e.g. from
      `vocab.encode("entailment")`.
    fallback: initializer for the remaining rows (default: sampled vocab).
  """
  if not label_token_ids or any(len(ids) == 0 for ids in label_token_ids):
    raise ValueError(f"Every class label needs at least one token, got {label_token_ids!r}.")
  fallback = fallback or sampled_vocab(embedding)

  def init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    _check_embedding(embedding, _check_2d(shape)[1])
    table = jnp.asarray(embedding)
    head = jnp.stack([table[jnp.asarray(ids)].mean(axis=0) for ids in label_token_ids])
    return _with_fallback(head, key, shape, dtype, fallback, "class_labels")

  return init


def from_string(embedding: Array | np.ndarray, token_ids: Sequence[int],
                fallback: Initializer | None = None) -> Initializer:
  """The first rows are the embedded tokens of a string; remaining rows from `fallback`."""
  if len(token_ids) == 0:
    raise ValueError("from_string needs a non-empty token sequence.")
  fallback = fallback or sampled_vocab(embedding)

  def init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    _check_embedding(embedding, _check_2d(shape)[1])
    head = jnp.asarray(embedding)[jnp.asarray(token_ids)]
    return _with_fallback(head, key, shape, dtype, fallback, "from_string")

  return init


class PromptFileError(ValueError):
  """A prompt file that is not a finite floating-point [P, D] `.npy` array."""


_NPY_MAGIC = b"\x93NUMPY"
_RESAVE = "save the prompt with np.save(path, prompt) as a float32 [P, D] array"


def _npy_header(path: pathlib.Path) -> tuple[tuple[int, ...], np.dtype, int]:
  """(shape, dtype, data offset) from a `.npy` header; the data itself is not read."""
  with open(path, "rb") as f:
    head = f.read(len(_NPY_MAGIC))
    if head != _NPY_MAGIC:
      kind = ("an .npz archive" if head.startswith(b"PK") else
              "empty" if not head else "not a .npy file (no .npy header)")
      raise PromptFileError(f"Prompt file {path} is {kind}; a prompt file is one array "
                            f"written by np.save: {_RESAVE}.")
    f.seek(0)
    try:
      version = np.lib.format.read_magic(f)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)  # 2.0 and 3.0 share the layout.
      shape, _, dtype = read(f)
    except Exception as err:  # numpy parses the header dict with tokenize and ast.
      raise PromptFileError(f"Prompt file {path} has a damaged .npy header ({err}); "
                            f"{_RESAVE}.") from err
    return tuple(shape), dtype, f.tell()


def load_npy_prompt(path: str | pathlib.Path) -> np.ndarray:
  """Reads a saved prompt [P, D]; never unpickles.

  Raises:
    FileNotFoundError: no such file.
    PromptFileError: not a `.npy` file, a truncated one, an array of Python objects, a
      non-floating dtype, not [P, D] / [T, P, D], or NaN / inf values (the message names the file).
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Prompt file {path} does not exist.")
  shape, dtype, offset = _npy_header(path)
  if dtype.hasobject:
    raise PromptFileError(f"Prompt file {path} holds Python objects (dtype {dtype}), which "
                          f"prompt_jax never unpickles; only numeric arrays are accepted: "
                          f"{_RESAVE}.")
  if not np.issubdtype(dtype, np.floating):
    raise PromptFileError(f"Prompt file {path} holds {dtype} values; a prompt is a "
                          f"floating-point array in embedding space: {_RESAVE}.")
  if len(shape) not in (2, 3) or 0 in shape:
    raise PromptFileError(f"Prompt file {path} has shape {shape}; a prompt is [P, D] (or "
                          "[T, P, D] for a per-task export), with no empty dimension.")
  expected, found = int(np.prod(shape)) * dtype.itemsize, path.stat().st_size - offset
  if found != expected:
    raise PromptFileError(f"Prompt file {path} is truncated or damaged: its header promises "
                          f"{shape} {dtype} ({expected} bytes of data) but it holds "
                          f"{found}; copy it again or {_RESAVE}.")
  array = np.load(path, allow_pickle=False)
  bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
  if bad:
    raise PromptFileError(f"Prompt file {path} has {bad} non-finite value(s) (NaN or inf) "
                          f"out of {array.size}; the run that wrote it diverged. Use an "
                          f"earlier prompt_<step>.npy or retrain with a lower learning rate.")
  return array


def from_npy(path: str | pathlib.Path) -> Initializer:
  """A saved prompt [P, D] (the reference implementation's .npy format)."""
  array = load_npy_prompt(path)

  def init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    del key
    if tuple(array.shape) != tuple(shape):
      raise ValueError(f"Prompt file {path} holds shape {tuple(array.shape)} but the prompt "
                       f"is {tuple(shape)} (PROMPT_LENGTH x d_model); use a matching file or "
                       "prompt length.")
    return jnp.asarray(array, dtype)

  return init


# ---------------------------------------------------------------------------------------
# Initializers as configurable objects (what gin binds).


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """What initializers may draw on once the checkpoint is loaded.

  Attributes:
    embedding: the frozen model's token embedding table [V, D].
    vocabulary: the task's vocabulary (a seqio.Vocabulary), for label / text initializers.
  """
  embedding: Any
  vocabulary: Any = None

  def encode(self, text: str, what: str) -> list[int]:
    if self.vocabulary is None:
      raise ValueError(f"{what} needs the task's vocabulary to tokenise {text!r}.")
    ids = list(self.vocabulary.encode(text))
    if not ids:
      raise ValueError(f"{what}: {text!r} tokenises to no tokens.")
    return ids


class _NeedsPretrained:
  """A spec that must be bound to the pretrained embedding before it initialises."""

  def bind(self, pretrained: Pretrained) -> Initializer:
    raise NotImplementedError

  def __call__(self, key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    raise ValueError(f"{self!r} needs the pretrained embedding: build the model with "
                     "`prompt_jax.runs.build_model`, or call "
                     "`initializers.bind_initializers(module, Pretrained(embedding, vocab))`.")


@dataclasses.dataclass(frozen=True)
class RandomUniform:
  """U[minval, maxval) (the paper: U[-0.5, 0.5])."""
  minval: float = -0.5
  maxval: float = 0.5

  def __call__(self, key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    return random_uniform(self.minval, self.maxval)(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class ReferenceUniform(RandomUniform):
  """U[0, 0.5): the reference implementation's default random init."""
  minval: float = 0.0
  maxval: float = 0.5


@dataclasses.dataclass(frozen=True)
class SampledVocab(_NeedsPretrained):
  """Rows sampled without replacement from the first `population` embedding rows."""
  population: int = DEFAULT_POPULATION

  def bind(self, pretrained: Pretrained) -> Initializer:
    return sampled_vocab(pretrained.embedding, self.population)


@dataclasses.dataclass(frozen=True)
class ClassLabels(_NeedsPretrained):
  """Row i = mean embedding of label i's sub-tokens; the rest sampled vocab."""
  labels: tuple[str, ...] = ()
  population: int = DEFAULT_POPULATION

  def bind(self, pretrained: Pretrained) -> Initializer:
    if not self.labels or isinstance(self.labels, str):
      raise ValueError("ClassLabels needs a list of label strings, e.g. "
                       "CLASS_LABELS=['entailment', 'not_entailment'].")
    ids = [pretrained.encode(label, "ClassLabels") for label in self.labels]
    return class_labels(pretrained.embedding, ids,
                        sampled_vocab(pretrained.embedding, self.population))


@dataclasses.dataclass(frozen=True)
class FromString(_NeedsPretrained):
  """The first rows are the embedded tokens of `text`; the rest sampled vocab."""
  text: str = ""
  population: int = DEFAULT_POPULATION

  def bind(self, pretrained: Pretrained) -> Initializer:
    ids = pretrained.encode(self.text, "FromString")
    return from_string(pretrained.embedding, ids,
                       sampled_vocab(pretrained.embedding, self.population))


@dataclasses.dataclass(frozen=True)
class FromFile:
  """A saved prompt (`.npy`, [P, D]), read when the prompt is initialised."""
  path: str = ""

  def check(self) -> None:
    """Finds the file (and reads its header) without initialising anything."""
    if not self.path:
      raise ValueError("FromFile needs a path (PROMPT_FILE=...).")
    load_npy_prompt(self.path)

  def __call__(self, key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    self.check()
    return from_npy(self.path)(key, shape, dtype)


RUN_PROMPT_CHOICES = ("best", "latest")


def run_prompt_path(model_dir: str | pathlib.Path, which: str | int = "best") -> pathlib.Path:
  """The exported prompt of a training run: `<model_dir>/prompts/prompt_<step>.npy`.

  Args:
    model_dir: a training run's model dir (what `prompt-jax train` wrote).
    which: "best" (`prompt_best.npy`, the best-on-validation export, falling back to the
      latest step when the run recorded no best), "latest" (the highest step) or a step.

  Raises:
    FileNotFoundError: no such run dir, or it holds no matching export (the message lists
      what it holds).
  """
  prompts = pathlib.Path(model_dir) / "prompts"
  if not pathlib.Path(model_dir).is_dir():
    raise FileNotFoundError(f"Source run dir {model_dir} does not exist.")
  steps = sorted(int(p.stem.split("_", 1)[1]) for p in prompts.glob("prompt_*.npy")
                 if p.stem.split("_", 1)[1].isdigit())
  if isinstance(which, bool) or not (which in RUN_PROMPT_CHOICES or isinstance(which, int)):
    raise ValueError(f"FromRun.which must be one of {RUN_PROMPT_CHOICES} or a step, got "
                     f"{which!r}.")
  if which == "best" and (prompts / "prompt_best.npy").exists():
    return prompts / "prompt_best.npy"
  if isinstance(which, int):
    path = prompts / f"prompt_{which}.npy"
    if path.exists():
      return path
  elif steps:
    return prompts / f"prompt_{steps[-1]}.npy"
  raise FileNotFoundError(f"Run dir {model_dir} has no exported prompt {which!r} "
                          f"(exported steps: {steps or 'none'}); train it first, or point "
                          "at a run dir that `prompt-jax train` wrote.")


@dataclasses.dataclass(frozen=True)
class FromRun:
  """A source run's exported prompt (prompt transfer from its model dir, PoT).

  `which`: "best" (best-on-validation export, else the latest step), "latest" or a step.
  The file is resolved and read when the prompt is initialised (so at every start of the
  target run, which keeps resuming exact).
  """
  model_dir: str = ""
  which: str | int = "best"

  def check(self) -> pathlib.Path:
    """The prompt file this resolves to (raises if there is none)."""
    if not self.model_dir:
      raise ValueError("FromRun needs the source run's model dir (SOURCE_MODEL_DIR=...).")
    return run_prompt_path(self.model_dir, self.which)

  def __call__(self, key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    return from_npy(self.check())(key, shape, dtype)


def map_initializer_specs(module: Any, fn: Callable[[Any], Any]) -> Any:
  """A clone of a (prompt) module with every pretrained-dependent spec replaced by `fn(spec)`.

  Looks at the module's dataclass fields: a spec (anything with `bind`) is replaced; a nested
  module is mapped recursively. Plain initializers stay.
  """
  if module is None or not dataclasses.is_dataclass(module):
    return module
  updates = {}
  for field in dataclasses.fields(module):
    if field.name in ("parent", "name"):
      continue
    value = getattr(module, field.name, None)
    if isinstance(value, _NeedsPretrained):
      updates[field.name] = fn(value)
    elif hasattr(value, "clone") and dataclasses.is_dataclass(value):
      mapped = map_initializer_specs(value, fn)
      if mapped is not value:
        updates[field.name] = mapped
  return module.clone(**updates) if updates else module


def bind_initializers(module: Any, pretrained: Pretrained) -> Any:
  """A clone of a (prompt) module with every initializer spec bound to `pretrained`."""
  return map_initializer_specs(module, lambda spec: spec.bind(pretrained))
