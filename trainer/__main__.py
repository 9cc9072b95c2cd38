"""`python -m trainer` runs the `quantlab-train` command line."""

from trainer.cli import main
from trainer.train.leave import leave

leave(main())
