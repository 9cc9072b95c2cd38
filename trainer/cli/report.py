"""The subcommands that show what jobs produced: `jobs`, `report` and `compare`. All read the
store alone: no Vast.ai key is needed."""

from __future__ import annotations

import argparse
import json
import sys
import webbrowser
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.cli.options import (
    add_bucket,
    add_json,
    add_store,
    int_in,
    job_id_arg,
    store_for,
    symbol_arg,
)
from trainer.cli.output import metrics_line
from trainer.job.state import STATES
from trainer.report.history import SORT_KEYS

if TYPE_CHECKING:
    from trainer.report.compare import Comparison
    from trainer.report.history import JobRow


def register(sub: Any) -> None:
    p = sub.add_parser("jobs", help="the job history: every job in the store, with its metrics")
    p.add_argument(
        "--symbol", action="append", default=[], type=symbol_arg, help="jobs that trained on it"
    )
    p.add_argument("--tag", action="append", default=[], help="jobs with this tag (all given)")
    p.add_argument("--since", help="started since a day (2026-05-01), an ISO time or an age (7d)")
    p.add_argument("--state", action="append", default=[], choices=STATES, help="only these")
    p.add_argument(
        "--sort",
        default="started",
        choices=list(SORT_KEYS),
        help="best (or newest) first; jobs without the value last (default started)",
    )
    p.add_argument("--reverse", action="store_true", help="the other way round")
    p.add_argument(
        "--limit", type=int_in(1, 10**9), default=None, metavar="N", help="at most N jobs"
    )
    p.add_argument(
        "--sweeps",
        action="store_true",
        help="the sweeps instead: trials by state, the best trial, steps saved, cost "
        "(a sweep's trials: --tag sweep:SWEEP)",
    )
    _common(p)
    p.set_defaults(handler=_jobs)

    p = sub.add_parser(
        "report", help="write a job's (or a sweep's) report page (one self-contained HTML file)"
    )
    p.add_argument(
        "job_id", metavar="JOB", type=job_id_arg, help="a job id, or a sweep id for its leaderboard"
    )
    p.add_argument(
        "--vs",
        metavar="JOB|production",
        type=job_id_arg,
        help="share every plot with another job, or with the live production model",
    )
    p.add_argument(
        "--symbol",
        type=symbol_arg,
        help="with --vs production: whose production (default: the job's)",
    )
    p.add_argument("--out", type=Path, help="the page (default reports/JOB.html)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    _common(p, with_json=False)
    p.set_defaults(handler=_report)

    p = sub.add_parser("compare", help="committed jobs side by side, and the gate's preference")
    p.add_argument("job_ids", nargs="+", metavar="JOB", type=job_id_arg)
    p.add_argument("--vs", choices=["production"], help="gate each job against production")
    p.add_argument(
        "--symbol", type=symbol_arg, help="which symbol's production (default: each job's only one)"
    )
    _common(p)
    p.set_defaults(handler=_compare)


def _common(p: argparse.ArgumentParser, *, with_json: bool = True) -> None:
    add_store(p)
    add_bucket(p)
    if with_json:
        add_json(p)


def _jobs(args: argparse.Namespace) -> int:
    from trainer.report.history import Filters, list_history, parse_since
    from trainer.store.layout import Layout

    if args.sweeps:
        return _sweeps(args)
    filters = Filters(
        symbols=args.symbol,
        tags=args.tag,
        since=parse_since(args.since) if args.since else None,
        states=args.state,
        sort=args.sort,
        reverse=args.reverse,
        limit=args.limit,
    )
    rows = list_history(store_for(args.store), Layout(artifacts_bucket=args.bucket), filters)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    if not rows:
        print("no job matches" if any(vars(filters).values()) else "no job in the store")
        return 0
    print(
        _table(
            [
                "JOB",
                "STATE",
                "STARTED",
                "SYMBOLS",
                "DATES",
                "MODEL",
                "IC",
                "RANK IC",
                "VAL LOSS",
                "COST",
                "TIME",
                "NAME",
            ],
            [_row(r) for r in rows],
        )
    )
    return 0


def _sweeps(args: argparse.Namespace) -> int:
    from trainer.report.history import list_sweeps
    from trainer.store.layout import Layout

    found = list_sweeps(store_for(args.store), Layout(artifacts_bucket=args.bucket))
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in found], indent=2))
        return 0
    if not found:
        print("no sweep in the store")
        return 0
    rows = []
    for r in found:
        best = r.best_trial
        counts = r.counts()
        trials = " ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        rows.append(
            [
                r.sweep_id,
                r.state,
                r.started_at.replace("T", " ").removesuffix("Z")[:16],
                f"{trials} of {r.trials_planned}",
                f"{r.sampler}/{r.pruning}",
                best.job_id if best else "–",
                f"{r.metric} {best.value:+.4f}" if best and best.value is not None else "–",
                str(r.steps_saved),
                f"${r.cost_usd:.4f}" if r.attempts else "local",
                r.name or "–",
            ]
        )
    header = ["SWEEP", "STATE", "STARTED", "TRIALS", "SEARCH", "BEST", "OBJECTIVE"]
    print(_table([*header, "STEPS SAVED", "COST", "NAME"], rows))
    return 0


def _row(r: JobRow) -> list[str]:
    s, m = r.summary, r.summary.metrics
    state = f"{r.state} ({r.phase})" if r.phase else r.state
    name = " ".join([s.name, *(f"#{t}" for t in s.tags)]).strip()
    return [
        r.job_id,
        state,
        (s.started_at or "–").replace("T", " ").removesuffix("Z")[:16],
        ",".join(s.symbols) or "–",
        s.date_span or "–",
        f"{s.model}/{s.loss}" if s.model else "–",
        f"{m.ic:+.4f}" if m else "–",
        f"{m.rank_ic:+.4f}" if m else "–",
        _loss(m.loss if m.loss is not None else m.val_loss) if m else "–",
        f"${s.cost_usd:.4f}" if s.launches else "local" if s.committed else "–",
        _duration(r.duration_s),
        name or "–",
    ]


def _loss(value: float) -> str:
    return f"{value:.5g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    numeric = {"IC", "RANK IC", "VAL LOSS", "COST", "TIME"}
    lines = []
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if h in numeric else c.ljust(w)
            for c, w, h in zip(row, widths, header, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    from trainer.report.build import default_out, gather, write_page, write_report
    from trainer.store.layout import Layout
    from trainer.store.records import SweepRecord, read_record

    store = store_for(args.store)
    sweep = read_record(
        store, Layout(artifacts_bucket=args.bucket).job(args.job_id).sweep, SweepRecord
    )
    if sweep is not None and args.vs is None:
        from trainer.report.sweep import render_sweep

        out = write_page(render_sweep(sweep), args.out or Path("reports") / f"{args.job_id}.html")
    else:
        jobs = gather(store, args.bucket, args.job_id, args.vs, args.symbol)
        out = write_report(jobs, args.out or default_out(jobs))
    print(f"report: {out}")
    if args.open and not webbrowser.open(out.as_uri()):
        print(f"no browser to open it here; open {out.as_uri()}", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from trainer.report.compare import compare

    found = compare(
        store_for(args.store),
        args.bucket,
        args.job_ids,
        vs_production=args.vs == "production",
        symbol=args.symbol,
    )
    if args.json:
        print(json.dumps(found.to_json(), indent=2, default=str))
        return 0
    print(_comparison(found))
    return 0


def _comparison(found: Comparison) -> str:
    header = ["", *(e.job_id for e in found.entries)]
    rows = [
        ["name", *(e.name or "–" for e in found.entries)],
        ["symbol", *(e.symbol for e in found.entries)],
        ["ic", *(f"{e.metrics.ic:+.4f}" for e in found.entries)],
        ["rank ic", *(f"{e.metrics.rank_ic:+.4f}" for e in found.entries)],
        ["hit rate", *(f"{e.metrics.hit_rate:.3f}" for e in found.entries)],
        [
            "loss",
            *(_loss(e.metrics.loss) if e.metrics.loss is not None else "–" for e in found.entries),
        ],
        ["mse", *(_loss(e.metrics.val_loss) for e in found.entries)],
        ["val rows", *(f"{e.metrics.rows:,}" for e in found.entries)],
        ["train rows", *(f"{e.train_rows:,}" for e in found.entries)],
        ["steps", *(f"{e.steps:,}" for e in found.entries)],
        ["train time", *(_duration(e.train_seconds) for e in found.entries)],
        [
            "cost",
            *(f"${e.cost_usd:.4f}" if e.cost_usd is not None else "local" for e in found.entries),
        ],
        ["gate", *("passes" if e.passed else "refuses" for e in found.entries)],
    ]
    lines = [_table(header, rows), ""]
    for symbol, live in found.production.items():
        what = f"v{live.version} from {live.source_job}" if live else "nothing live"
        ic = f", {metrics_line(live.metrics)}" if live and live.metrics else ""
        lines.append(f"production {symbol}: {what}{ic}")
    lines += [f"{e.job_id}: {e.gate}" for e in found.entries]
    lines.append(
        f"preferred: {found.preferred}: {found.why}"
        if found.preferred
        else f"preferred: none: {found.why}"
    )
    return "\n".join(lines)
