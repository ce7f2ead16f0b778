"""`python -m prompt_jax ...` is the `prompt-jax` command."""

import sys

from prompt_jax.cli import main

sys.exit(main())
