"""`python -m trainer` runs the `quantlab-train` command line."""

from trainer.cli import entry

entry()
