"""SeqIO tasks for the benchmarks and their metrics (evaluation: `prompt_jax.train.evaluation`).

Importing this package registers every task and mixture below with SeqIO (re-importing or
re-registering replaces them, so it is idempotent); `MIXTURE_OR_TASK_NAME` then selects
one by name. Nothing is read or downloaded at import.

Naming scheme
-------------
  <benchmark>_<task>[_noprefix][_seed<s>][_<vocab>]

* `glue_<task>`, `super_glue_<task>`: T5's text-to-text format, inputs starting with the
  task word ('rte sentence1: ... sentence2: ...'); `..._noprefix`: the same text without
  that first word (Lester et al.'s setup).
* `dept_<task>[_noprefix]`: the 13-task EPT / DePT suite with DePT's re-splitting, seed 42;
  other seeds via `suites.register_dept_suite(seed)` -> `..._seed<s>`.
* `xnli_<lang>`, `xnli_mnli_train`; `sib200_<lang>`, `sib200_<lang>_k<k>_seed<s>`
  (`xlingual.register_sib200(dir)` or $PROMPT_JAX_SIB200_DIR).
* `super_glue_<task>_noprefix_sentinel`: targets prefixed with `<extra_id_0>` (the
  "span corruption + sentinel" form; `sentinel`).
* `squad`, `mrqa_<domain>` (and `..._noprefix`); `transfer_mrpc_as_qqp`, `transfer_qqp_as_mrpc`.
* Vocabulary: English tasks default to the T5 SentencePiece vocabulary, XNLI / SIB-200 to
  mT5's. Any task or mixture exists in every vocabulary by adding `_t5`, `_mt5` or `_byte`
  to a name whose default differs (`glue_rte_byte`, `xnli_de_t5`); `get_mixture_or_task`
  registers such a variant on first use. Paths: `vocab.set_vocabulary_path`.

Mixtures: `glue[_noprefix]`, `super_glue_8[_noprefix]`, `super_glue_8_noprefix_sentinel`, `dept13[_noprefix]`, `xnli_eval`,
`xnli_zeroshot`, `sib200_eval`, `mrqa_ood`, `mrqa_transfer`, `transfer_qqp_to_mrpc`,
`transfer_mrpc_to_qqp`. Evaluation-only members have no train split, so a mixture trains on
its training task and evaluates on all of them.

Every task's data comes from TFDS except SIB-200 (local TSVs). Reading unprepared TFDS data
raises `DataNotPreparedError` at once, naming the dataset and the command
`prompt-jax prepare <name> --tfds_data_dir=<dir>` (see `registry`).
"""

from prompt_jax.data import glue, sentinel, superglue, suites, transfer, xlingual
from prompt_jax.data.registry import (DataNotPreparedError, check_prepared,
                                      ensure_registered, format_task_list,
                                      get_dataset, get_mixture_or_task, list_tasks, prepare,
                                      prepare_command, set_tfds_data_dir, task_labels,
                                      tfds_datasets_for)
from prompt_jax.data.vocab import get_vocabulary, set_vocabulary_path


def register_all() -> None:
  """Registers every built-in task and mixture (run at import; safe to repeat)."""
  glue.register_glue()
  superglue.register_super_glue()
  suites.register_super_glue_8()
  sentinel.register_sentinel_super_glue()
  suites.register_dept_suite()
  xlingual.register_xnli()
  transfer.register_transfer()
  xlingual.maybe_register_sib200_from_env()


register_all()

__all__ = [
    "DataNotPreparedError", "check_prepared", "ensure_registered", "format_task_list",
    "get_dataset", "get_mixture_or_task", "get_vocabulary", "list_tasks", "prepare",
    "prepare_command", "register_all", "set_tfds_data_dir", "set_vocabulary_path",
    "task_labels", "tfds_datasets_for",
]
