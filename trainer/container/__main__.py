"""`python -m trainer.container`: the training image's entrypoint."""

from trainer.container.entrypoint import main

raise SystemExit(main())
