"""`quantlab-train`: argument parsing, output, and errors turned into exit codes. Nothing else.

The subcommands live beside this module (`job`, `launch`, `production`); `main` is the one
place an error becomes an exit code, through `trainer.errors.exit_code_of`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from trainer import __version__
from trainer.cli import job, launch, production, report, sweep
from trainer.errors import EXIT_CANCELLED, EXIT_INTERNAL, EXIT_SPEC, TrainerError, exit_code_of
from trainer.train.leave import leave

Handler = Callable[[argparse.Namespace], int]


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each record, so a live table that redirects it
    prints log records above itself instead of through its drawing."""

    @property
    def stream(self) -> object:
        # while prints go to the log (a job running), not back through that capture
        return getattr(sys.stderr, "terminal", sys.stderr)

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup_logging() -> None:
    """Human progress on stderr; stdout stays for results."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("quantlab")
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantlab-train",
        description="Train QuantLab models on Vast.ai GPUs from a JobSpec, or locally on CPU.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    job.register(sub)
    production.register(sub)
    launch.register(sub)
    report.register(sub)
    sweep.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0), or an argument refused by name (2)
        return exc.code if isinstance(exc.code, int) else EXIT_SPEC
    setup_logging()
    handler: Handler = args.handler
    try:
        return handler(args)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_of(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # the last line of defence: a one-line message, not a traceback
        if os.environ.get("QUANTLAB_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} (QUANTLAB_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def entry() -> NoReturn:
    """The `quantlab-train` command: `main`, then `train.leave` with its exit code."""
    leave(main())
