"""Task and mixture specs, their SeqIO registration, and the offline-data checks.

A `TaskSpec` says how to build one SeqIO task (source, text preprocessors, postprocessor,
metrics, label strings, the TFDS datasets it reads) independently of the vocabulary. The
spec is registered once under its own name with its default vocabulary; the same spec
under another vocabulary is the name plus a suffix (`glue_rte_byte`, `xnli_de_t5`), and is
registered on first request by `get_mixture_or_task` / `ensure_registered`, so the registry
stays small while every task exists in every vocabulary.

The CLI calls the plain functions here: `list_tasks` (`prompt-jax tasks`), `prepare`
(`prompt-jax prepare`), and `check_prepared` before any data is read.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Sequence

from absl import logging
import seqio
import tensorflow_datasets as tfds

from prompt_jax.data import sources
from prompt_jax.data import vocab as vocab_lib
from prompt_jax.data.sources import (DataNotPreparedError, ensure_prepared, prepare_command,
                                     resolve_data_dir, set_tfds_data_dir)

__all__ = [
    "TaskSpec", "MixtureSpec", "DataNotPreparedError", "TaskStatus", "add_task",
    "add_mixture", "ensure_registered", "get_mixture_or_task", "task_labels",
    "task_spec", "list_tasks", "format_task_list", "tfds_datasets_for", "check_prepared",
    "prepare", "prepare_command", "set_tfds_data_dir", "resolve_data_dir", "get_dataset",
    "rate_num_examples", "task_names", "mixture_names",
]

Rate = float | Callable[[seqio.Task], float]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Everything about a task except its vocabulary.

  Attributes:
    name: registered name with the default vocabulary.
    make_source: `task_name -> seqio.DataSource` (the name goes into error messages).
    preprocessors: text-level preprocessors producing `inputs` / `targets` strings.
    postprocess_fn: SeqIO postprocessor `(output, example, is_target)`.
    metric_fns: `(targets, predictions) -> dict` functions.
    labels: the label strings of a classification task (for rank classification), or None.
    tfds_datasets: TFDS names ('glue/rte:2.0.0') the task reads; empty for file sources.
    vocabulary: default vocabulary name ('t5', 'mt5' or 'byte').
    description: one line for `prompt-jax tasks`.
  """
  name: str
  make_source: Callable[[str], seqio.DataSource]
  preprocessors: tuple[Callable[..., Any], ...]
  postprocess_fn: Callable[..., Any] | None = None
  metric_fns: tuple[Callable[..., Any], ...] = ()
  labels: tuple[str, ...] | None = None
  tfds_datasets: tuple[str, ...] = ()
  vocabulary: str = "t5"
  description: str = ""


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
  """A mixture of spec'd tasks: (task name, rate) pairs, names at the default vocabulary."""
  name: str
  tasks: tuple[tuple[str, Rate], ...]
  vocabulary: str = "t5"
  description: str = ""


@dataclasses.dataclass(frozen=True)
class TaskStatus:
  """One row of `prompt-jax tasks`."""
  name: str
  kind: str  # 'task' or 'mixture'
  vocabulary: str
  tfds_datasets: tuple[str, ...]
  prepared: bool | None  # None: reads no TFDS data.
  description: str


_TASK_SPECS: dict[str, TaskSpec] = {}
_MIXTURE_SPECS: dict[str, MixtureSpec] = {}
# Registered SeqIO name -> (spec name, vocabulary name).
_TASK_VARIANTS: dict[str, tuple[str, str]] = {}
_MIXTURE_VARIANTS: dict[str, tuple[str, str]] = {}


def rate_num_examples(task: seqio.Task) -> float:
  """Example-proportional mixing rate (training examples); 1.0 when the size is unknown."""
  n = task.num_input_examples("train") if "train" in task.splits else None
  if not n:
    logging.warning("Size of %s's train split unknown; mixing it at rate 1.", task.name)
    return 1.0
  return float(n)


def _variant_name(base: str, default_vocab: str, vocabulary: str) -> str:
  return base if vocabulary == default_vocab else f"{base}_{vocabulary}"


def _replace_in_seqio(registry: type[seqio.DatasetProviderRegistry], name: str) -> None:
  if name in registry.names():
    registry.remove(name)


def _register_task(spec: TaskSpec, vocabulary: str) -> str:
  name = _variant_name(spec.name, spec.vocabulary, vocabulary)
  _replace_in_seqio(seqio.TaskRegistry, name)
  seqio.TaskRegistry.add(
      name,
      source=spec.make_source(name),
      output_features=vocab_lib.output_features(vocabulary),
      preprocessors=[*spec.preprocessors, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=spec.postprocess_fn,
      metric_fns=list(spec.metric_fns))
  _TASK_VARIANTS[name] = (spec.name, vocabulary)
  return name


def _register_mixture(spec: MixtureSpec, vocabulary: str) -> str:
  name = _variant_name(spec.name, spec.vocabulary, vocabulary)
  members = []
  for task_name, rate in spec.tasks:
    member = _TASK_SPECS[task_name]
    variant = _variant_name(task_name, member.vocabulary, vocabulary)
    if variant not in _TASK_VARIANTS:
      _register_task(member, vocabulary)
    members.append((variant, rate))
  _replace_in_seqio(seqio.MixtureRegistry, name)
  seqio.MixtureRegistry.add(name, members)
  _MIXTURE_VARIANTS[name] = (spec.name, vocabulary)
  return name


def add_task(spec: TaskSpec) -> str:
  """Registers `spec` under its default vocabulary (re-registering replaces it)."""
  if spec.vocabulary not in vocab_lib.VOCABULARY_NAMES:
    raise ValueError(f"{spec.name}: unknown vocabulary {spec.vocabulary!r}.")
  _TASK_SPECS[spec.name] = spec
  return _register_task(spec, spec.vocabulary)


def add_mixture(spec: MixtureSpec) -> str:
  """Registers a mixture of already added tasks, all in the mixture's vocabulary."""
  missing = [t for t, _ in spec.tasks if t not in _TASK_SPECS]
  if missing:
    raise ValueError(f"Mixture {spec.name} names unknown tasks {missing}.")
  _MIXTURE_SPECS[spec.name] = spec
  return _register_mixture(spec, spec.vocabulary)


def _unknown(name: str) -> KeyError:
  known = list(_TASK_VARIANTS) + list(_MIXTURE_VARIANTS)
  close = difflib.get_close_matches(name, known, n=5)
  hint = f" Did you mean {close}?" if close else ""
  return KeyError(f"No prompt_jax task or mixture named {name!r}.{hint} "
                  "`prompt-jax tasks` lists them.")


def ensure_registered(name: str) -> str:
  """Registers the vocabulary variant `name` (e.g. 'glue_rte_byte') if needed; returns it."""
  if name in _TASK_VARIANTS or name in _MIXTURE_VARIANTS:
    return name
  for vocabulary in vocab_lib.VOCABULARY_NAMES:
    base = name.removesuffix(f"_{vocabulary}")
    if base == name:
      continue
    if base in _TASK_SPECS and _TASK_SPECS[base].vocabulary != vocabulary:
      return _register_task(_TASK_SPECS[base], vocabulary)
    if base in _MIXTURE_SPECS and _MIXTURE_SPECS[base].vocabulary != vocabulary:
      return _register_mixture(_MIXTURE_SPECS[base], vocabulary)
  raise _unknown(name)


def get_mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
  """The SeqIO task or mixture `name`, registering a vocabulary variant on demand."""
  return seqio.get_mixture_or_task(ensure_registered(name))


def _resolve(name: str) -> tuple[str, str, str]:
  """(kind, spec name, vocabulary) of a registered or registrable name."""
  name = ensure_registered(name)
  if name in _TASK_VARIANTS:
    return ("task", *_TASK_VARIANTS[name])
  return ("mixture", *_MIXTURE_VARIANTS[name])


def task_spec(name: str) -> TaskSpec:
  """The spec behind task `name` (any vocabulary variant)."""
  kind, base, _ = _resolve(name)
  if kind != "task":
    raise ValueError(f"{name!r} is a mixture, not a task.")
  return _TASK_SPECS[base]


def task_labels(name: str) -> tuple[str, ...] | None:
  """Label strings of classification task `name` (None for generation-only tasks)."""
  return task_spec(name).labels


def task_names() -> list[str]:
  """Registered task names (default vocabularies and variants requested so far)."""
  return sorted(_TASK_VARIANTS)


def mixture_names() -> list[str]:
  return sorted(_MIXTURE_VARIANTS)


def tfds_datasets_for(name: str) -> tuple[str, ...]:
  """TFDS datasets ('glue/rte:2.0.0', ...) task or mixture `name` reads, in order."""
  kind, base, _ = _resolve(name)
  if kind == "task":
    return _TASK_SPECS[base].tfds_datasets
  out: list[str] = []
  for task_name, _ in _MIXTURE_SPECS[base].tasks:
    out += [d for d in _TASK_SPECS[task_name].tfds_datasets if d not in out]
  return tuple(out)


def check_prepared(name: str, data_dir: str | None = None) -> str:
  """Raises `DataNotPreparedError` (fast, no download) unless all of `name`'s TFDS data is
  prepared in `data_dir` (default: the configured TFDS data dir); returns the data dir."""
  return ensure_prepared(tfds_datasets_for(name), name, data_dir)


def prepare(name: str, data_dir: str | None = None) -> list[str]:
  """Downloads and prepares every TFDS dataset task or mixture `name` needs.

  Needs network access (run it once per machine or into a shared bucket). Returns the
  dataset names prepared; already prepared ones are left as they are.
  """
  data_dir = resolve_data_dir(data_dir)
  done = []
  for dataset in tfds_datasets_for(name):
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared():
      logging.info("Preparing %s in %s", dataset, data_dir)
      builder.download_and_prepare()
    done.append(dataset)
  return done


def list_tasks(data_dir: str | None = None, *, include_variants: bool = True
               ) -> list[TaskStatus]:
  """Every registered task and mixture with whether its TFDS data is prepared in `data_dir`.

  Args:
    data_dir: TFDS data dir to check (default: the configured one).
    include_variants: also list vocabulary variants registered on request.
  """
  data_dir = resolve_data_dir(data_dir)
  cache: dict[str, bool] = {}

  def prepared(datasets: tuple[str, ...]) -> bool | None:
    if not datasets:
      return None
    for d in datasets:
      if d not in cache:
        cache[d] = sources.dataset_is_prepared(d, data_dir)
    return all(cache[d] for d in datasets)

  rows = []
  for variants, specs, kind in ((_TASK_VARIANTS, _TASK_SPECS, "task"),
                                (_MIXTURE_VARIANTS, _MIXTURE_SPECS, "mixture")):
    for name, (base, vocabulary) in sorted(variants.items()):
      if not include_variants and vocabulary != specs[base].vocabulary:
        continue
      datasets = tfds_datasets_for(name)
      rows.append(TaskStatus(name, kind, vocabulary, datasets, prepared(datasets),
                             specs[base].description))
  return rows


def format_task_list(rows: Sequence[TaskStatus]) -> str:
  """`list_tasks` rows as an aligned text table."""
  mark = {True: "yes", False: "no", None: "-"}
  width = max([len(r.name) for r in rows] + [4])
  lines = [f"{'name':<{width}}  {'kind':<7}  {'vocab':<5}  prepared  tfds datasets"]
  for r in rows:
    lines.append(f"{r.name:<{width}}  {r.kind:<7}  {r.vocabulary:<5}  "
                 f"{mark[r.prepared]:<8}  {', '.join(r.tfds_datasets) or '(local files)'}")
  return "\n".join(lines)


def get_dataset(name: str, split: str, sequence_length: dict[str, int] | None = None, *,
                data_dir: str | None = None, shuffle: bool = False, seed: int | None = None,
                num_epochs: int | None = 1):
  """Checks the data is prepared, then returns SeqIO's dataset for task or mixture `name`.

  A given `data_dir` becomes the process-wide TFDS data dir (SeqIO has only a global one).
  """
  if data_dir is not None:
    set_tfds_data_dir(data_dir)
  check_prepared(name, data_dir)
  provider = get_mixture_or_task(name)
  return provider.get_dataset(sequence_length=sequence_length, split=split, shuffle=shuffle,
                              seed=seed, num_epochs=num_epochs)
