"""`promote`, `rollback` and `production`: the production-model subcommands of the CLI."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from trainer.cli.options import (
    add_bucket,
    add_json,
    add_store,
    bucket_layout,
    job_id_arg,
    symbol_arg,
)

if TYPE_CHECKING:
    from trainer.promotion.promote import PromotionResult


def register(sub: Any) -> None:
    """Add the subcommands to the `quantlab-train` parser's subparsers."""
    p = sub.add_parser("promote", help="verify a committed job and make its model production")
    p.add_argument("job_id", metavar="JOB", type=job_id_arg)
    p.add_argument(
        "--symbol", type=symbol_arg, help="which symbol's production (default: the job's only one)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="skip the metrics gate (recorded as forced); artifacts are still verified",
    )
    _common(p)
    p.set_defaults(handler=_promote)

    p = sub.add_parser("rollback", help="restore the production model a symbol had before")
    p.add_argument("symbol", metavar="SYMBOL", type=symbol_arg)
    _common(p)
    p.set_defaults(handler=_rollback)

    p = sub.add_parser("production", help="what is live per symbol, from which job, and history")
    p.add_argument("symbol", metavar="SYMBOL", nargs="?", type=symbol_arg)
    _common(p)
    p.set_defaults(handler=_production)


def _common(p: argparse.ArgumentParser) -> None:
    add_store(p)
    add_bucket(p)
    p.add_argument("--by", default=None, metavar="WHO", help="recorded as promoted_by")
    add_json(p)


def _promote(args: argparse.Namespace) -> int:
    from trainer.promotion.promote import default_promoter, promote  # torch loads only here

    store, layout = bucket_layout(args)
    result = promote(
        store,
        layout,
        args.job_id,
        symbol=args.symbol,
        force=args.force,
        promoted_by=args.by or default_promoter(),
    )
    print_change(result, args.json)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from trainer.promotion.promote import default_promoter, rollback

    store, layout = bucket_layout(args)
    result = rollback(store, layout, args.symbol, promoted_by=args.by or default_promoter())
    print_change(result, args.json)
    return 0


def _production(args: argparse.Namespace) -> int:
    from trainer.promotion.production import production_status

    store, layout = bucket_layout(args)
    rows = [state.to_json() for state in production_status(store, layout, args.symbol)]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("nothing in production")
    for row in rows:
        print(json.dumps(row, default=str))
    return 0


def print_change(result: PromotionResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return
    metrics = result.manifest.metrics
    ic_text = f", IC {metrics.ic:.4f}" if metrics is not None else ""
    replacing = (
        f", replacing v{result.previous_version}" if result.previous_version is not None else ""
    )
    forced = " (forced)" if result.forced else ""
    print(
        f"{result.symbol}: {result.outcome} v{result.version} (job {result.source_job}"
        f"{ic_text}){replacing}{forced}"
    )
    print(f"gate: {result.gate}")
    print(f"manifest: {result.manifest_uri}")
    print(f"model: {result.model_uri}")
