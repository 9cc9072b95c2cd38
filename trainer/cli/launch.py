"""The launcher's subcommands of `quantlab-train`: launch, status, logs, stop, list, reap.

`register(subparsers)` adds them to the main parser. Each handler is a thin layer over the
Python API (`launch`) and `commands`: it returns 0 or raises a TrainerError that the main
entry point turns into its documented exit code. `launch --json` prints NDJSON events on
stdout and, last, the `result` event, also when the launch fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from trainer.cli.options import (
    add_bucket,
    add_json,
    add_spec,
    add_store,
    add_vast,
    int_in,
    job_id_arg,
)
from trainer.cli.output import attempt_lines, metrics_line, rows_line
from trainer.errors import SpecError, TrainerError, exit_code_of, outcome_of, problems_of
from trainer.launcher.events import Reporter
from trainer.launcher.hosts import default_bad_hosts_file
from trainer.launcher.payload import OPTIONAL_ENV
from trainer.launcher.session import Session
from trainer.redact import Secrets, install
from trainer.spec import load_spec

if TYPE_CHECKING:
    from trainer.launcher.result import LaunchOptions, LaunchResult


def register(subparsers: Any) -> None:
    """Add the launcher commands to `quantlab-train`'s subparsers."""
    p = subparsers.add_parser("launch", help="run a JobSpec on a rented Vast.ai GPU, watch it")
    add_spec(p, many=True)
    p.add_argument(
        "--total-budget",
        type=float,
        default=None,
        metavar="USD",
        help="stop every job once all of them together have spent this much",
    )
    add_launch_args(p)
    _common(p, with_bucket=False, json_help="NDJSON events, then the result, on stdout")
    p.set_defaults(handler=_launch)

    p = subparsers.add_parser(
        "status",
        help="a job's outcome, metrics, cost and attempts (a finished job needs no Vast.ai key)",
    )
    p.add_argument("job_id", type=job_id_arg)
    _common(p)
    p.set_defaults(handler=_status)

    p = subparsers.add_parser("logs", help="a job's container log (live, else the shipped one)")
    p.add_argument("job_id", type=job_id_arg)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    p.add_argument("--tail", type=int_in(1, 1_000_000), default=200, help="lines (200)")
    _common(p, with_json=False)
    p.set_defaults(handler=_logs)

    p = subparsers.add_parser("stop", help="destroy every instance of a job now")
    p.add_argument("job_id", type=job_id_arg)
    _common(p)
    p.set_defaults(handler=_stop)

    p = subparsers.add_parser("list", help="jobs with live instances (labels quantlab:<jobId>)")
    _common(p)
    p.set_defaults(handler=_list)

    p = subparsers.add_parser("reap", help="destroy labelled instances no live job needs")
    p.add_argument("--dry-run", action="store_true", help="only say what would be destroyed")
    p.add_argument(
        "--stale-after-s",
        type=float,
        default=None,
        help="launcher heartbeat age that means the launcher is gone "
        "(default: each job's limits.heartbeat_timeout_minutes)",
    )
    _common(p)
    p.set_defaults(handler=_reap)


def add_launch_args(p: argparse.ArgumentParser) -> None:
    """How to launch: wait or detach, dry runs, polling, container settings, credentials."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--wait",
        action="store_true",
        help="watch until the job ends, then destroy its instance (the default)",
    )
    mode.add_argument(
        "--detach",
        action="store_true",
        help="return once the job runs; its own limits and self-destroy take over",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, pre-flight, train a few steps on this CPU, search offers and "
        "estimate the cost; rent nothing",
    )
    p.add_argument(
        "--local-dry-run", action="store_true", help="train a few steps on this CPU first"
    )
    p.add_argument("--poll-s", type=float, default=10.0, help="seconds between polls (10)")
    p.add_argument(
        "--logs-every-s", type=float, default=30.0, help="seconds between log snapshots (30)"
    )
    p.add_argument(
        "--env",
        dest="container_env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"container setting: {', '.join(sorted(OPTIONAL_ENV))}",
    )
    p.add_argument(
        "--credentials",
        choices=["auto", "scoped", "passthrough"],
        default="auto",
        help="AWS credentials for the job: STS-scoped to its prefixes, or the launcher's own "
        "(auto: scoped, else the launcher's own with a warning)",
    )
    p.add_argument(
        "--bad-hosts-file",
        type=Path,
        default=None,
        help=f"hosts to skip, remembered across launches (default {default_bad_hosts_file()})",
    )


def _common(
    p: argparse.ArgumentParser,
    *,
    with_json: bool = True,
    with_bucket: bool = True,
    json_help: str = "JSON on stdout",
) -> None:
    add_store(p)
    if with_bucket:  # launch takes it from the spec
        add_bucket(p)
    add_vast(p)
    if with_json:
        add_json(p, json_help)


def reporter_for(args: argparse.Namespace, events: bool = False) -> Reporter:
    """Human lines on stderr; NDJSON events on stdout only for `launch --json`. Every log
    handler masks the secrets this command learns (keys, minted credentials)."""
    secrets = Secrets()
    install(secrets)
    json_out = sys.stdout if events and args.json else None
    return Reporter(json_out=json_out, human=sys.stderr, secrets=secrets)


def _session(args: argparse.Namespace, reporter: Reporter) -> Session:
    from trainer.launcher.session import open_session

    return open_session(
        store=args.store, key_file=args.vast_key_file, url=args.vast_url, secrets=reporter.secrets
    )


def _pairs(items: list[str]) -> dict[str, str]:
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError("bad --env", [f"{item!r}: write it as KEY=VALUE"])
        found[key] = value
    return found


def launch_options(args: argparse.Namespace) -> LaunchOptions:
    """The options `add_launch_args` parsed."""
    from trainer.launcher.result import LaunchOptions

    return LaunchOptions(
        dry_run=args.dry_run,
        local_dry_run=args.local_dry_run,
        detach=args.detach,
        poll_s=args.poll_s,
        logs_every_s=args.logs_every_s,
        container_env=_pairs(args.container_env),
        credentials=args.credentials,
        bad_hosts_file=args.bad_hosts_file or default_bad_hosts_file(),
    )


def _launch(args: argparse.Namespace) -> int:
    from trainer.launcher.launch import launch

    reporter = reporter_for(args, events=True)
    options = launch_options(args)
    session = {"store": args.store, "vast_url": args.vast_url, "vast_key_file": args.vast_key_file}
    try:
        if len(args.spec) > 1 or args.total_budget:
            results = _launch_many(args, options, reporter, session)
        else:
            results = None
            spec = load_spec(args.spec[0], args.overrides)
            reporter.job_id = spec.job.id or ""  # a derived id is known once the data is read
            result = launch(spec, options=options, reporter=reporter, **session).wait()
    except TrainerError as exc:
        result_on_error(reporter, exc)
        raise
    finally:
        reporter.close()  # the live table's last drawing stays; the summary goes below it
    out = sys.stderr if args.json else sys.stdout
    if results is not None:
        _print_many(results, out)
        return next((int(r["exit_code"]) for r in results if r.get("exit_code")), 0)
    print_summary(result, out)
    return result.exit_code


def result_on_error(reporter: Reporter, exc: TrainerError) -> None:
    """The `result` event of a launch that failed before it could emit its own."""
    if not any(e["event"] == "result" for e in reporter.events):
        fields: dict[str, Any] = {"outcome": outcome_of(exc), "exit_code": exit_code_of(exc)}
        if problems_of(exc):
            fields["problems"] = problems_of(exc)
        reporter.emit("result", exc.headline, **fields)


def print_summary(result: LaunchResult, out: TextIO) -> None:
    """The launch's last words, once: what the job produced and what it cost. On stdout, or
    on stderr with `--json`, where stdout carries the `result` event instead."""
    lines = [f"job {result.job_id}: {result.outcome} ({result.reason})"]
    if "sweep.json" in result.artifacts:
        lines[0] = f"sweep {result.job_id}: {result.outcome} ({result.reason})"
    if result.metrics is not None:
        lines.append(metrics_line(result.metrics))
    if result.rows is not None:
        lines.append(rows_line(result.rows))
    if result.artifacts:
        main = result.artifacts.get("manifest.json") or result.artifacts.get("sweep.json", "")
        lines.append(f"artifacts: {main}")
    lines.append(f"cost: ${result.cost_usd:.4f} over {len(result.attempts)} instance(s)")
    if result.report:
        lines.append(f"report: {result.report}")
    print("\n".join(lines), file=out, flush=True)


def _launch_many(
    args: argparse.Namespace, options: Any, reporter: Reporter, session: dict[str, Any]
) -> list[dict[str, Any]]:
    """Several specs at once: each job's `result` event, in spec order."""
    from trainer.launcher.fleet import launch_many

    specs = [load_spec(path, args.overrides) for path in args.spec]
    return launch_many(
        specs, options=options, reporter=reporter, total_budget_usd=args.total_budget, **session
    )


def _print_many(results: list[dict[str, Any]], out: TextIO) -> None:
    """One summary line per job (the exit code is the first non-zero one in spec order)."""
    lines = []
    for r in results:
        ic = (r.get("metrics") or {}).get("ic")
        lines.append(
            f"job {r['job_id']}: {r['outcome']} ({r.get('reason', '')}), "
            f"${r.get('cost_usd', 0):.4f}" + (f", validation ic {ic:.4f}" if ic is not None else "")
        )
        if r.get("report"):
            lines.append(f"  report: {r['report']}")
    print("\n".join(lines), file=out, flush=True)


def _status(args: argparse.Namespace) -> int:
    """From the store first: a finished job needs no Vast.ai key."""
    from trainer.launcher.ops import job_status

    reporter = reporter_for(args)
    found = job_status(_session(args, reporter), args.bucket, args.job_id)
    if found.note:
        print(f"note: {found.note}", file=sys.stderr)
    if args.json:
        print(reporter.secrets.redact(json.dumps(found.to_json(), indent=2, default=str)))
        return 0
    state = f"{found.state} ({found.phase})" if found.phase else found.state
    name = f" ({found.name})" if found.name else ""
    lines = [f"job {found.job_id}{name}: {state}"]
    if found.metrics is not None:
        lines.append(metrics_line(found.metrics))
    if found.rows is not None:
        lines.append(rows_line(found.rows))
    progress = found.progress
    if progress is not None and found.state == "running":
        loss = progress.latest.loss
        total = f"/{progress.total_steps}" if progress.total_steps else ""
        tail = f"  loss {loss:.4f}" if loss is not None else ""
        lines.append(f"progress: step {progress.step}{total}  epoch {progress.epoch}{tail}")
    if found.failure is not None and found.state in ("failed", "interrupted"):
        lines.append(f"failure ({found.failure.cause}): {found.failure.reason}")
    if found.started_at:
        lines.append(f"ran: {found.started_at} → {found.ended_at or 'now'}")
    if found.cost_usd is not None:
        lines.append(f"cost: ${found.cost_usd:.4f} over {len(found.attempts)} instance(s)")
    lines += ["  " + line for line in attempt_lines(found.attempts)]
    for i in found.instances or []:
        lines.append(
            f"live instance {i['instance_id']}: {i['state']}  {i['gpu']}  ${i['dph']:.4f}/h  "
            f"${i['spent_usd']:.4f} so far"
        )
    lines.append(f"artifacts: {found.artifacts}")
    if found.report:
        lines.append(f"report: {found.report}")
    print(reporter.secrets.redact("\n".join(lines[:1] + ["  " + x for x in lines[1:]])))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from trainer.launcher.ops import follow_logs, job_logs

    reporter = reporter_for(args)
    session = _session(args, reporter)

    def emit(line: str) -> None:
        print(reporter.secrets.redact(line), flush=True)

    for line in job_logs(session, args.bucket, args.job_id, args.tail):
        emit(line)
    if args.follow:
        follow_logs(session, args.job_id, emit)
    return 0


def _stop(args: argparse.Namespace) -> int:
    from trainer.launcher.ops import stop_job

    reporter = reporter_for(args)
    reporter.job_id = args.job_id
    destroyed = stop_job(_session(args, reporter), args.bucket, args.job_id, reporter)
    if args.json:
        print(json.dumps({"job_id": args.job_id, "destroyed": destroyed}))
    else:
        print(f"job {args.job_id}: {len(destroyed)} instance(s) destroyed")
    return 0


def _list(args: argparse.Namespace) -> int:
    from trainer.launcher.ops import list_jobs

    reporter = reporter_for(args)
    jobs = list_jobs(_session(args, reporter), args.bucket)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    for job in jobs:
        ids = ", ".join(str(i["instance_id"]) for i in job["instances"])
        print(f"{job['job_id']}  {job['state']}  instances {ids}  ${job['spent_usd']:.4f}")
    if not jobs:
        print("no job has a live instance")
    return 0


def _reap(args: argparse.Namespace) -> int:
    from trainer.launcher.ops import reap

    reporter = reporter_for(args)
    records = reap(
        _session(args, reporter),
        args.bucket,
        dry_run=args.dry_run,
        stale_after_s=args.stale_after_s,
        reporter=reporter,
    )
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        gone = sum(r["action"] == "destroyed" for r in records)
        print(f"reap: {gone} destroyed, {len(records) - gone} kept")
    return 0
