"""`sweep`: many trials of one base JobSpec, here on this CPU (`--local`) or on one rented
GPU, with a leaderboard as trials end and `--promote-best` through the normal gate."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from trainer.cli.options import add_json, add_spec, add_store, store_for
from trainer.errors import Refused, UsageError
from trainer.spec.sweep import SweepSpec, load_sweep
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout
from trainer.store.records import SweepRecord


def register(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run many trials of a base JobSpec, pruning the losers")
    add_spec(p)
    p.set_defaults(handler=_sweep)
    p.add_argument(
        "--local", action="store_true", help="run the trials here, on this computer's CPU"
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="cpu",
        help="with --local: where the trials train (default cpu)",
    )
    p.add_argument(
        "--promote-best",
        action="store_true",
        help="then promote the best trial's model through its spec's gate",
    )
    add_store(p)
    add_json(p, "NDJSON: one line per trial start and end, then the result")


def _sweep(args: argparse.Namespace) -> int:
    if not args.local:
        raise UsageError("sweep: give --local to run the trials on this computer")
    sweep = load_sweep(args.spec, args.overrides)
    store = store_for(args.store, sweep.base.storage.raw_bucket)
    record = _run_local(sweep, store, args)
    print(json.dumps(_result(record, store, sweep)) if args.json else _board(record))
    if args.promote_best:
        return _promote_best(record, sweep, store, args.json)
    return 0


def _run_local(sweep: SweepSpec, store: ObjectStore, args: argparse.Namespace) -> SweepRecord:
    from trainer.sweep.run import run_sweep  # torch and optuna load only here

    seen: dict[int, str] = {}

    def on_change(record: SweepRecord) -> None:
        for t in record.trials:
            if seen.get(t.number) == t.state:
                continue
            seen[t.number] = t.state
            if args.json:
                event = "trial_started" if t.state == "running" else "trial_ended"
                print(json.dumps({"event": event, **t.model_dump(mode="json")}), flush=True)
            elif t.state != "running":
                print(_board(record), file=sys.stderr, flush=True)

    return run_sweep(sweep, store, device=args.device, on_change=on_change).record


def _board(record: SweepRecord) -> str:
    from trainer.sweep.board import render

    return render(record)


def _result(record: SweepRecord, store: ObjectStore, sweep: SweepSpec) -> dict[str, Any]:
    paths = Layout.of(sweep.base.storage).job(record.sweep_id)
    best = record.best_trial
    return {
        "event": "result",
        "sweep_id": record.sweep_id,
        "state": record.state,
        "trials": record.counts(),
        "best": best.model_dump(mode="json") if best else None,
        "steps_saved": record.steps_saved,
        "data_reads": record.data_reads,
        "cost_usd": record.cost_usd,
        "sweep": store.uri(paths.sweep),
    }


def _promote_best(record: SweepRecord, sweep: SweepSpec, store: ObjectStore, as_json: bool) -> int:
    from trainer.cli.production import print_change
    from trainer.promotion.promote import default_promoter, promote

    best = record.best_trial
    if best is None:
        raise Refused(f"sweep {record.sweep_id} has no complete trial with a value to promote")
    result = promote(
        store, Layout.of(sweep.base.storage), best.job_id, promoted_by=default_promoter()
    )
    print_change(result, as_json)
    return 0
