"""Command-line options several `quantlab-train` subcommands share, spelled once."""

from __future__ import annotations

import argparse


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set train.lr=3e-4 (validated like the file)",
    )


def add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default=None,
        metavar="ROOT",
        help="object store root: s3:// (default, or $QUANTLAB_STORE) or file://DIR",
    )
