"""Benchmark suites as mixtures: SuperGLUE-8 and the 13-task suite of EPT / DePT.

SuperGLUE-8 (`super_glue_8`, `super_glue_8_noprefix`): BoolQ, CB, COPA, MultiRC, ReCoRD,
RTE, WiC, WSC, example-proportional.

The 13-task suite (`dept13`, `dept13_noprefix`; tasks `dept_<task>[_noprefix]`): MNLI, QQP,
QNLI, SST-2, STS-B, MRPC, RTE, CoLA (GLUE) and MultiRC, BoolQ, WiC, WSC, CB (SuperGLUE) with
DePT's re-splitting, since GLUE / SuperGLUE test labels are hidden:

* small sets (CoLA, STS-B, MRPC, RTE, MultiRC, BoolQ, WiC, WSC, CB): train as is; the
  original validation split is halved by a seeded permutation into validation and test
  (MultiRC by paragraph, so no question is split across the two);
* large sets (QQP, QNLI, SST-2): 1,000 training examples, chosen by the seed, become the
  validation split; the rest train; the original validation split is the test split;
* MNLI: validation = validation_mismatched, test = validation_matched (as DePT's code).

Parts are disjoint and depend only on the seed (default 42); `register_dept_suite(seed=s)`
adds a copy of the suite named with `_seed<s>`. WSC is a True / False classification of
(text, candidate, pronoun) here, as in DePT, not referent generation.
"""

from __future__ import annotations

import dataclasses

from prompt_jax.data import metrics as m
from prompt_jax.data.glue import GLUE_TASKS, KvTask, kv_spec
from prompt_jax.data.registry import MixtureSpec, add_mixture, add_task, rate_num_examples
from prompt_jax.data.sources import Resplit, SplitSpec
from prompt_jax.data.superglue import (BOOL_LABELS, SUPER_GLUE_KV_TASKS, SUPER_GLUE_VERSION,
                                       multirc_spec, super_glue_task_name)

SUPER_GLUE_8 = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")
DEPT_TASKS = ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola", "multirc", "boolq",
              "wic", "wsc", "cb")
DEPT_HALVED = ("cola", "stsb", "mrpc", "rte", "multirc", "boolq", "wic", "wsc", "cb")
DEPT_HELD_OUT = ("qqp", "qnli", "sst2")
DEPT_HOLDOUT_SIZE = 1000
DEPT_DEFAULT_SEED = 42

DEPT_WSC = KvTask(
    "wsc", f"super_glue/wsc.fixed:{SUPER_GLUE_VERSION}", "wsc",
    (("span1_text", "span1_text"), ("span2_text", "span2_text"), ("text", "text")),
    BOOL_LABELS, (m.accuracy,), description="WSC as True/False classification")


def halved_validation(seed: int, key: str = "idx", dense_ids: bool = True
                      ) -> dict[str, SplitSpec | str]:
  """train as is; validation halved into validation (part 0) and test (part 1)."""
  resplit = Resplit("validation", None, seed, key=key, dense_ids=dense_ids)
  return {"train": "train",
          "validation": SplitSpec("validation", resplit=resplit, part=0),
          "test": SplitSpec("validation", resplit=resplit, part=1)}


def held_out_train(seed: int, size: int = DEPT_HOLDOUT_SIZE) -> dict[str, SplitSpec | str]:
  """`size` training examples become validation; the original validation becomes test."""
  resplit = Resplit("train", size, seed)
  return {"train": SplitSpec("train", resplit=resplit, part=1),
          "validation": SplitSpec("train", resplit=resplit, part=0),
          "test": "validation"}


def dept_splits(task: str, seed: int) -> dict[str, SplitSpec | str]:
  """DePT's split of `task` (one of DEPT_TASKS) under `seed`."""
  if task == "mnli":
    return {"train": "train", "validation": "validation_mismatched",
            "test": "validation_matched"}
  if task in DEPT_HELD_OUT:
    return held_out_train(seed)
  if task == "multirc":
    return halved_validation(seed, key="idx/paragraph", dense_ids=False)
  if task in DEPT_HALVED:
    return halved_validation(seed)
  raise ValueError(f"{task!r} is not in the DePT suite {DEPT_TASKS}.")


def dept_task_name(task: str, use_prefix: bool = True, seed: int = DEPT_DEFAULT_SEED) -> str:
  """'rte' -> 'dept_rte' / 'dept_rte_noprefix' / 'dept_rte_noprefix_seed7'."""
  name = f"dept_{task}" + ("" if use_prefix else "_noprefix")
  return name if seed == DEPT_DEFAULT_SEED else f"{name}_seed{seed}"


def _dept_base(task: str) -> KvTask:
  if task == "wsc":
    return DEPT_WSC
  return GLUE_TASKS[task] if task in GLUE_TASKS else SUPER_GLUE_KV_TASKS[task]


def register_dept_suite(seed: int = DEPT_DEFAULT_SEED) -> list[str]:
  """Registers the 13 DePT tasks (both formats) and the `dept13` mixtures for `seed`."""
  names = []
  for use_prefix in (True, False):
    task_names = []
    for task in DEPT_TASKS:
      name = dept_task_name(task, use_prefix, seed)
      splits = dept_splits(task, seed)
      if task == "multirc":
        spec = multirc_spec(name, use_prefix=use_prefix, splits=splits)
      else:
        spec = kv_spec(dataclasses.replace(_dept_base(task), splits=splits), name,
                       use_prefix=use_prefix)
      add_task(dataclasses.replace(spec, description=f"DePT split (seed {seed}) of "
                                   f"{spec.description}"))
      task_names.append(name)
    mixture = "dept13" + ("" if use_prefix else "_noprefix")
    mixture = mixture if seed == DEPT_DEFAULT_SEED else f"{mixture}_seed{seed}"
    add_mixture(MixtureSpec(mixture, tuple((t, rate_num_examples) for t in task_names),
                            description=f"EPT / DePT 13-task suite, seed {seed}"))
    names += task_names + [mixture]
  return names


def register_super_glue_8() -> None:
  """`super_glue_8` / `super_glue_8_noprefix` over the registered SuperGLUE tasks."""
  for use_prefix in (True, False):
    add_mixture(MixtureSpec(
        "super_glue_8" + ("" if use_prefix else "_noprefix"),
        tuple((super_glue_task_name(t, use_prefix), rate_num_examples) for t in SUPER_GLUE_8),
        description="SuperGLUE-8, example-proportional"))
