"""Studies: multi-run drivers on the skill gym or real checkpoints; gym results are labelled as such."""
