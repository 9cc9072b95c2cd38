"""`python -m trainer.container`: the training image's entrypoint."""

from trainer.container.entrypoint import main
from trainer.train.leave import leave

leave(main())
