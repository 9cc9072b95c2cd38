"""How a job's process ends: one process exits as usual; a `torchrun` rank skips the
interpreter's teardown."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def leave(code: int) -> NoReturn:
    """Exit with `code`. Under `torchrun` (WORLD_SIZE above 1) every rank has written and
    flushed all it had to by now, and it leaves without the interpreter's teardown: a native
    thread pool winding down there aborted a worker rank right after its last collective,
    and `torchrun` then failed the whole job."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise SystemExit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
