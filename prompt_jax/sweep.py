"""`prompt-jax sweep`: the table driver (`prompt_jax.studies.sweep`).

  prompt-jax sweep --gin_file=tables/<name>.gin [--gin.NAME=VALUE ...]
                   [--print_commands] [--collect_only] [--subprocess]
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="prompt-jax sweep",
                              description="Runs an ablation grid; writes its table and figure.")
  p.add_argument("--gin_file", action="append", default=[], required=True,
                 help="a table gin file (tables/...), repeatable")
  p.add_argument("--gin_search_paths", default="")
  p.add_argument("--print_commands", action="store_true",
                 help="print every cell's commands (one line per cell) and run nothing")
  p.add_argument("--collect_only", action="store_true",
                 help="run nothing; write the tables from the cells that exist")
  p.add_argument("--subprocess", action="store_true",
                 help="run each command in a fresh Python process")
  p.add_argument("-v", "--verbose", action="store_true")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  from prompt_jax import cli
  from prompt_jax.studies import sweep
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    bindings, rest = cli._split_gin_flags(argv)
    args = _parser().parse_args(rest)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)
    cli.parse_gin(args.gin_file, bindings, args.gin_search_paths, check_macros=True)
    from prompt_jax import configurables
    table = configurables.Table()
    if args.print_commands:
      for line in sweep.iter_commands(table):
        print(line)
      return 0
    runner = sweep.in_subprocess if args.subprocess else sweep.in_process
    result = sweep.run_sweep(table, runner=runner, collect_only=args.collect_only)
  except Exception as e:  # pylint: disable=broad-except  User errors: one line, status 2.
    if isinstance(e, (sweep.SweepError, *cli._known_errors())) or cli._is_gin_required(e):
      print(f"prompt-jax sweep: error: {cli._message(e)}", file=sys.stderr)
      return 2
    raise
  root = pathlib.Path(table.table_dir)
  done = sum(r["complete"] for r in result.rows)
  print(f"sweep: {done}/{len(result.rows)} cells complete ({len(result.ran)} run now, "
        f"{len(result.skipped)} skipped); tables: {root / 'table.md'}, {root / 'figure.png'}")
  return result.status


if __name__ == "__main__":
  sys.exit(main())
