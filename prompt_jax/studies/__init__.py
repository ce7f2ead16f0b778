"""Studies: multi-run drivers that train several settings and tabulate their results."""
