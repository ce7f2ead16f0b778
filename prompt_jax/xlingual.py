"""`prompt-jax xlingual`: the cross-lingual table driver (`prompt_jax.studies.crosslingual`)."""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
  from prompt_jax.studies import crosslingual
  return crosslingual.main(argv)


if __name__ == "__main__":
  sys.exit(main())
