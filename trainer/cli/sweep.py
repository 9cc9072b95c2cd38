"""`sweep`: many trials of one base JobSpec on one rented GPU (or here, with `--local`),
a leaderboard as trials end, and `--promote-best` through the normal gate."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from typing import Any

from trainer.cli.launch import (
    add_launch_args,
    launch_options,
    print_summary,
    reporter_for,
    result_on_error,
)
from trainer.cli.options import add_json, add_spec, add_store, add_vast, store_for
from trainer.errors import Refused, TrainerError
from trainer.spec.sweep import SweepSpec, load_sweep
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout
from trainer.store.records import SweepRecord
from trainer.sweep.board import render

BOARD_EVERY_S = 5.0
"""How often a watched sweep's `sweep.json` is read for the leaderboard."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sweep", help="run many trials of a base JobSpec on one rented GPU, pruning the losers"
    )
    add_spec(p)
    p.add_argument("--local", action="store_true", help="run the trials here, on this computer")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="cpu",
        help="with --local: where the trials train (default cpu)",
    )
    p.add_argument(
        "--promote-best",
        action="store_true",
        help="then promote the best trial's model through its spec's promotion gate",
    )
    add_launch_args(p)
    add_store(p)
    add_vast(p)
    add_json(p, "NDJSON: launch events, one line per trial start and end, then the result")
    p.set_defaults(handler=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.spec, args.overrides)
    store = store_for(args.store, sweep.base.storage.raw_bucket)
    if args.local and args.dry_run:
        return _check_local(sweep, store)
    if args.local:
        record = _run_local(sweep, store, args)
        print(json.dumps(_result(record, store, sweep)) if args.json else render(record))
        code = 0
    else:
        found, code = _launch(sweep, store, args)
        if found is None:
            return code
        record = found
        print(render(record), file=sys.stderr if args.json else sys.stdout)
    if args.promote_best and code == 0:
        return _promote_best(record, sweep, store, args.json)
    return code


def _trial_events(emit: Callable[[str, dict[str, Any]], None]) -> Callable[[SweepRecord], bool]:
    """A function that emits what changed in each record it is shown (a trial started or
    ended), and says whether anything ended."""
    seen: dict[int, str] = {}

    def show(record: SweepRecord) -> bool:
        ended = False
        for t in record.trials:
            if seen.get(t.number) == t.state:
                continue
            seen[t.number] = t.state
            ended = ended or t.state != "running"
            event = "trial_started" if t.state == "running" else "trial_ended"
            emit(event, t.model_dump(mode="json"))
        return ended

    return show


def _check_local(sweep: SweepSpec, store: ObjectStore) -> int:
    """`--local --dry-run`: the sweep validated and its base's data pre-flighted; no trial."""
    from trainer.job.identity import resolve

    resolved = sweep.model_copy(update={"base": resolve(sweep.base, store).spec})
    print(
        f"sweep ok: {resolved.sweep_id}, {resolved.n_trials} trials of "
        f"{', '.join(resolved.space)} ({resolved.sampler}, pruning {resolved.pruning.rule}); "
        "nothing was run"
    )
    return 0


def _run_local(sweep: SweepSpec, store: ObjectStore, args: argparse.Namespace) -> SweepRecord:
    from trainer.sweep.run import run_sweep  # torch and optuna load only here

    def emit(event: str, fields: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps({"event": event, **fields}), flush=True)

    show = _trial_events(emit)

    def on_change(record: SweepRecord) -> None:
        if show(record) and not args.json:
            print(render(record), file=sys.stderr, flush=True)

    return run_sweep(sweep, store, device=args.device, on_change=on_change).record


def _launch(
    sweep: SweepSpec, store: ObjectStore, args: argparse.Namespace
) -> tuple[SweepRecord | None, int]:
    """The sweep on one rented instance, watched; its record once it ends (None for a dry
    run or a detached launch) and the exit code."""
    from trainer.launcher.launch import launch_sweep
    from trainer.sweep.book import read_sweep

    reporter = reporter_for(args, events=True)
    stop = threading.Event()
    try:
        handle = launch_sweep(
            sweep,
            options=launch_options(args),
            reporter=reporter,
            store=store,
            vast_url=args.vast_url,
            vast_key_file=args.vast_key_file,
        )
        paths = Layout.of(handle.spec.storage).job(handle.job_id)
        show = _trial_events(lambda event, fields: reporter.emit(event, **fields))

        def board() -> None:  # the leaderboard, from sweep.json, as trials end
            while not stop.wait(BOARD_EVERY_S):
                try:
                    record = read_sweep(store, paths)
                except TrainerError:
                    continue
                if record is not None and show(record) and not args.json:
                    reporter.say(render(record))

        watcher = threading.Thread(target=board, daemon=True)
        watcher.start()
        result = handle.wait()
    except TrainerError as exc:
        result_on_error(reporter, exc)
        raise
    finally:
        stop.set()
        reporter.close()
    print_summary(result, sys.stderr if args.json else sys.stdout)
    if result.outcome in ("dry_run", "detached"):
        return None, result.exit_code
    return read_sweep(store, paths), result.exit_code


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
    layout = Layout.of(sweep.base.storage)
    result = promote(store, layout, best.job_id, promoted_by=default_promoter())
    print_change(result, as_json)
    return 0
