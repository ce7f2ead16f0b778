"""`prompt-jax` (also `python -m prompt_jax`): flags and gin in, plain functions out.

  prompt-jax train   --gin_file=... [--gin_file=...] [--gin.NAME=VALUE ...]
  prompt-jax eval    --gin_file=runs/prompt_eval.gin ...
  prompt-jax infer   --gin_file=runs/prompt_infer.gin ...
  prompt-jax neighbours --gin_file=runs/prompt_neighbours.gin ...
  prompt-jax tasks   [--tfds_data_dir=DIR]
  prompt-jax prepare NAME [--tfds_data_dir=DIR]
  prompt-jax bench   [--peer peft ...]
  prompt-jax demo    [...]
  prompt-jax transferability --checkpoint=... --source_prompts=... --target_task=... ...
  prompt-jax plan    --gin_file=... [--devices=N | --topology=v4-64] [--device_memory=16GiB]
  prompt-jax sweep   --gin_file=tables/<name>.gin [--print_commands]   (ablation tables)

Gin files are looked up in the working directory, in `--gin_search_paths`, and in the gin
files shipped inside the package (`prompt_jax/gin`), so `--gin_file=runs/prompt_finetune.gin`
works from any directory after `pip install .`. The result never depends on the order of
`--gin_file` flags: two files that bind the same parameter differently are an error.
`--gin.NAME=VALUE` bindings apply last and override the files.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import logging
import os
import pathlib
import re
import sys
import tokenize
import traceback
from typing import Sequence

GIN_DIR = pathlib.Path(__file__).resolve().parent / "gin"
RUN_COMMANDS = ("train", "eval", "infer", "neighbours")


class CliError(Exception):
  """Printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="prompt-jax", description=__doc__.split("\n\n")[0])
  p.add_argument("command", choices=RUN_COMMANDS + ("tasks", "prepare", "bench", "demo"))
  p.add_argument("name", nargs="?", help="task or mixture (for `prepare`)")
  p.add_argument("--gin_file", action="append", default=[], help="repeatable")
  p.add_argument("--gin_search_paths", default="", help="comma-separated directories")
  p.add_argument("--tfds_data_dir", default=None)
  p.add_argument("-v", "--verbose", action="store_true")
  # Multi-host (train / eval / infer): an explicit coordinator; TPU pods, SLURM and Open MPI
  # are detected from their environment. Defaults: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
  # JAX_PROCESS_ID.
  p.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  return p


def _initialize_distributed(args: argparse.Namespace) -> None:
  """Joins the multi-host job (if any) before anything can start the JAX backend."""
  from prompt_jax.train import multihost
  multihost.initialize(coordinator_address=args.coordinator_address,
                       num_processes=args.num_processes, process_id=args.process_id)


def _split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` bindings from the other flags."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise CliError(f"{arg!r}: write gin bindings as --gin.NAME=VALUE.")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return bindings, rest


def _resolve_gin_file(name: str, search_paths: Sequence[pathlib.Path]) -> pathlib.Path:
  for base in (pathlib.Path.cwd(), *search_paths, GIN_DIR):
    path = (base / name) if not os.path.isabs(name) else pathlib.Path(name)
    if path.is_file():
      return path
  raise CliError(f"Gin file {name!r} not found in the working directory, "
                 f"--gin_search_paths or the shipped {GIN_DIR}; `ls {GIN_DIR}` lists them.")


# What gin raises for a bad file or binding (tokenize: an unclosed bracket).
_GIN_PARSE_ERRORS = (ValueError, KeyError, IOError, SyntaxError, ImportError,
                     tokenize.TokenError)


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: str = "", *,
              check_macros: bool = False) -> str:
  """Parses gin files (order-independently) then bindings; returns the config string."""
  import gin
  import prompt_jax.runs  # noqa: F401  Registers the configurables.
  import prompt_jax.interpret  # noqa: F401  Registers `neighbours`.
  paths = [pathlib.Path(p) for p in search_paths.split(",") if p]
  for p in (*paths, GIN_DIR):
    gin.add_config_file_search_path(str(p))
  resolved = [str(_resolve_gin_file(f, paths)) for f in files]
  results = []
  for order in (resolved, resolved[::-1]):
    gin.clear_config()
    try:
      gin.parse_config_files_and_bindings(order, None, finalize_config=False)
    except _GIN_PARSE_ERRORS as e:
      raise CliError(f"Gin error: {e}") from None
    results.append(gin.config_str())
  if results[0] != results[1]:
    raise CliError("The --gin_file files bind the same parameter differently, so the result "
                   "would depend on their order; keep one binding (or use --gin.NAME=VALUE).")
  if check_macros:  # Command-line flags: a macro nothing uses is a typo.
    check_macro_flags(bindings, results[0])
  try:
    gin.parse_config(list(bindings))
  except _GIN_PARSE_ERRORS as e:
    raise CliError(f"Gin binding error: {e}. Check the spelling against the gin files "
                   f"in {GIN_DIR}.") from None
  try:
    gin.finalize()
  except ValueError as e:
    unset = re.search(r"No bindings specified for '([A-Za-z_][\w.]*)/gin\.macro'", str(e))
    if unset:
      raise CliError(unset_macro_message(unset.group(1))) from None
    raise CliError(f"{e} Set it with --gin.NAME=VALUE (see the 'Required' block at the top "
                   "of the run file).") from None
  return gin.config_str()


def check_macro_flags(bindings: Sequence[str], parsed: str) -> None:
  """A `--gin.NAME=...` macro that no gin file or flag uses is a typo: say which it meant.

  Args:
    bindings: the command line's `NAME = VALUE` bindings.
    parsed: `gin.config_str()` of the parsed files (includes and imports followed), where
      every use of a macro reads `%NAME`.
  """
  texts = "\n".join([parsed, *bindings])
  used = set(re.findall(r"%([A-Z][A-Z0-9_]*)\b", texts))
  defined = set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)\s*=", texts, re.M))
  for binding in bindings:
    name = binding.split("=", 1)[0].strip()
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and name not in used:
      close = difflib.get_close_matches(name, sorted(used | defined - {name}), n=1)
      hint = f" Did you mean {close[0]}?" if close else ""
      raise CliError(f"--gin.{name} sets a macro that no gin file uses.{hint} The macros "
                     f"these files use: {', '.join(sorted(used))}.")


# Macros that a whole gin file sets, and which folder of shipped files offers them.
_MACRO_FILES = {"PROMPT": ("methods", "the prompt module (the method)", "prompt_tuning.gin"),
                "PROMPT_INIT": ("prompts", "the prompt initializer", "sampled_vocab.gin")}


def unset_macro_message(name: str) -> str:
  """One line for a macro the config uses but never sets."""
  if name in _MACRO_FILES:
    folder, what, example = _MACRO_FILES[name]
    options = ", ".join(sorted(p.name for p in (GIN_DIR / folder).glob("*.gin")))
    return (f"{name}, {what}, is not set: add one --gin_file={folder}/<file>.gin, e.g. "
            f"--gin_file={folder}/{example} (shipped: {options}).")
  return (f"Macro {name} is used but never set; set it with --gin.{name}=VALUE (see the "
          "'Required' block at the top of the run file).")


def _run(command: str) -> None:
  from prompt_jax import interpret, runs
  fn = {"train": runs.train, "eval": runs.evaluate, "infer": runs.infer,
        "neighbours": interpret.neighbours}[command]
  result = fn()
  if command == "neighbours":
    print(result.format_table())
  if command == "eval":
    print(result)
    if any("/members_mean/" in k for k in result):  # An ensemble: Lester Table 3's columns.
      from prompt_jax.train import ensemble
      n = len({k.split("/")[1] for k in result if "/member_" in k})
      print(ensemble.format_table(result, n))


def _known_errors() -> tuple[type[BaseException], ...]:
  from prompt_jax import runs
  from prompt_jax.checkpoints import CheckpointError
  from prompt_jax.data.sources import DataNotPreparedError
  from prompt_jax.prompts.initializers import PromptFileError
  from prompt_jax.prompts.panda import PandaError
  from prompt_jax.train.multihost import DistributedError
  from prompt_jax.train.run_dir import RunDirError
  from prompt_jax.train.trainer import TrainingDivergedError
  from prompt_jax.train.optimizer import OptimizerConfigError
  from prompt_jax.prompts.ipt import IPTSourceError
  return (CliError, runs.UserError, CheckpointError, DataNotPreparedError, FileNotFoundError,
          PromptFileError, RunDirError, TrainingDivergedError, OptimizerConfigError,
          IPTSourceError, PandaError, DistributedError)


# Write failures a user fixes (disk full, read-only, no permission): a message, not a trace.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def _message(e: BaseException) -> str:
  """The exception's text without gin's "In call to configurable ..." trailer."""
  return str(e).split("\n  In call to configurable")[0].strip()


def _report(e: Exception) -> int:
  """One line and exit status 2 for user-fixable errors; a trace and a hint for bugs."""
  from prompt_jax.train.trainer import TrainingInterrupted
  if isinstance(e, TrainingInterrupted):
    print(f"prompt-jax: {_message(e)}", file=sys.stderr)
    return 128 + e.signum
  if isinstance(e, _known_errors()) or _is_gin_required(e):
    print(f"prompt-jax: error: {_message(e)}", file=sys.stderr)
    return 2
  if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
    print(f"prompt-jax: error: cannot write {e.filename or ''}: {e.strerror}. Free space or "
          "fix permissions (or choose another MODEL_DIR), then rerun the same command: "
          "completed checkpoints are intact.", file=sys.stderr)
    return 2
  traceback.print_exc()
  print("prompt-jax: internal error (a bug, not your configuration): please report it with "
        "the command line and the trace above.", file=sys.stderr)
  return 1


def _dispatch(args: argparse.Namespace, bindings: list[str], extra: list[str]) -> int:
  if extra:
    raise CliError(f"Unrecognised arguments {extra}; see `prompt-jax --help`.")
  if args.command == "tasks":
    from prompt_jax.data import registry, skill_gym
    print(registry.format_task_list(registry.list_tasks(args.tfds_data_dir)))
    print(f"\nskill gym (generated on the fly, nothing to prepare): {len(skill_gym.SKILLS)} "
          f"skills as {skill_gym.TASK_PREFIX}<skill> and {skill_gym.TASK_PREFIX}<skill>_noword "
          f"(task word removed); mixtures {skill_gym.MIXTURE_NAME} (the demo backbone's "
          f"{len(skill_gym.CORE_SKILLS)} skills) and {skill_gym.TASK_PREFIX}all. "
          f"Core skills: {', '.join(skill_gym.CORE_SKILLS)}.")
    return 0
  if args.command == "prepare":
    if not args.name:
      raise CliError("`prompt-jax prepare` needs a task or mixture name.")
    from prompt_jax.data import registry
    try:
      print("\n".join(registry.prepare(args.name, args.tfds_data_dir)))
    except KeyError as e:
      raise CliError(str(e).strip("'\"")) from None
    return 0
  if not args.gin_file:
    raise CliError(f"`prompt-jax {args.command}` needs at least one --gin_file, e.g. "
                   f"--gin_file=runs/prompt_{'finetune' if args.command == 'train' else args.command}.gin.")
  if args.tfds_data_dir:
    bindings = [*bindings, f"{_run_fn_name(args.command)}.tfds_data_dir = '{args.tfds_data_dir}'"]
  _initialize_distributed(args)
  parse_gin(args.gin_file, bindings, args.gin_search_paths, check_macros=True)
  _run(args.command)
  return 0


def _run_fn_name(command: str) -> str:
  return {"train": "train", "eval": "evaluate", "infer": "infer",
          "neighbours": "neighbours"}[command]


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  # Quiets most of TensorFlow's C++ logging (the data pipeline's TF is CPU only; its notes on
  # CUDA and CPU features are noise here). Lines TF prints before its logging is set up still
  # appear; real failures still raise. `TF_CPP_MIN_LOG_LEVEL=0` shows everything again.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if argv and argv[0] in ("bench", "demo", "xlingual", "transferability", "plan",
                          "sweep"):  # They own their flags.
    import importlib
    return importlib.import_module(f"prompt_jax.{argv[0]}").main(argv[1:]) or 0
  try:
    bindings, rest = _split_gin_flags(argv)
  except CliError as e:
    print(f"prompt-jax: error: {e}", file=sys.stderr)
    return 2
  args, extra = _parser().parse_known_args(rest)
  logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                      format="%(asctime)s %(levelname)s %(message)s")
  try:
    return _dispatch(args, bindings, extra)
  except Exception as e:  # pylint: disable=broad-except  Every error gets one exit path.
    return _report(e)


def _is_gin_required(e: Exception) -> bool:
  return "gin.REQUIRED" in str(e) or "Required bindings" in str(e)


if __name__ == "__main__":
  sys.exit(main())
