"""Command-line options the `quantlab-train` subcommands share, each spelled once, and the
store and layout they open."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trainer.errors import InfraError
from trainer.spec import JobSpec, load_spec
from trainer.store import ObjectStore, default_store_root, open_store
from trainer.store.layout import ARTIFACTS_BUCKET, RAW_BUCKET, Layout, check_job_id, check_symbol


def job_id_arg(text: str) -> str:
    """An argparse `type` for a job (or sweep) id: one that cannot name a job folder (`../x`,
    `a/b`) is refused by name (exit 2) before it reaches a store key."""
    try:
        return check_job_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def symbol_arg(text: str) -> str:
    """An argparse `type` for a symbol: lower case as the layout writes it, or refused."""
    try:
        return check_symbol(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, e.g. btcusdt") from None


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse `type`: a whole number from `low` to `high`, refused by name otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high:,}")
        return value

    return parse


def add_spec(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    """The JobSpec argument and `--set`, validated together."""
    if many:
        p.add_argument("spec", nargs="+", help="JobSpec YAML file(s); several run in parallel")
    else:
        p.add_argument("spec", help="path to a JobSpec YAML file")
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


def add_bucket(p: argparse.ArgumentParser) -> None:
    """For commands that address jobs or production by id, not through a spec."""
    p.add_argument(
        "--bucket",
        default=ARTIFACTS_BUCKET,
        metavar="NAME",
        help=f"artifacts bucket holding ml-artifacts/ and models/production/ "
        f"(default {ARTIFACTS_BUCKET}; a staging spec's storage.artifacts_bucket)",
    )


def add_json(p: argparse.ArgumentParser, help: str = "machine-readable output on stdout") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_vast(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vast-key-file", metavar="FILE", help="Vast.ai API key file (default $VAST_API_KEY)"
    )
    p.add_argument(
        "--vast-url", metavar="URL", help="Vast.ai API base (default $VAST_URL, else Vast.ai)"
    )


def store_for(root: str | None, raw_bucket: str = RAW_BUCKET) -> ObjectStore:
    """The store `--store` names (default $QUANTLAB_STORE, else s3://), the raw bucket
    read-only."""
    try:
        return open_store(root or default_store_root(), read_only_buckets=[raw_bucket])
    except ValueError as exc:
        raise InfraError(f"--store: {exc}") from None


def bucket_layout(args: argparse.Namespace) -> tuple[ObjectStore, Layout]:
    """Store and layout for a command given `--store` and `--bucket`."""
    return store_for(args.store), Layout(artifacts_bucket=args.bucket)


@dataclass(frozen=True)
class Context:
    """What every command that works from a spec needs: the spec, its layout and its store."""

    spec: JobSpec
    layout: Layout
    store: ObjectStore


def open_context(
    spec_path: str, overrides: Sequence[str] = (), store_root: str | None = None
) -> Context:
    spec = load_spec(spec_path, overrides)
    store = store_for(store_root, spec.storage.raw_bucket)
    return Context(spec, Layout.of(spec.storage), store)
