"""`jobs`: every job under `ml-artifacts/`, from the store alone, filtered and sorted.

Quick as history grows: one listing request per thousand job folders, then each job's
`summary.json`, read concurrently; only jobs with no committed summary (running, failed,
interrupted, or committed by an older version) have their other records read, again all at
once."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.errors import UsageError, VerificationError
from trainer.job.state import STATES, JobFiles, State, files_from, phase_of, record_locs, state_of
from trainer.job.summary import summary_of, with_launches
from trainer.store.base import ObjectStore
from trainer.store.layout import JOB_ID_PATTERN, Layout
from trainer.store.records import JobSummary, SweepRecord, epoch_of, parse_record

SORT_KEYS: dict[str, bool] = {
    "started": True,
    "ic": True,
    "rank_ic": True,
    "hit_rate": True,
    "loss": False,
    "val_loss": False,
    "cost": False,
    "duration": False,
    "rows": True,
    "steps": True,
    "job": False,
}
"""Sort key → whether larger comes first (best first for metrics, newest first by default)."""


@dataclass(frozen=True)
class JobRow:
    """One job in the history."""

    job_id: str
    state: State
    phase: str | None
    summary: JobSummary
    """What is known of it: the stored summary, or one rebuilt from its other records."""

    @property
    def started_epoch(self) -> float | None:
        return epoch_of(self.summary.started_at) if self.summary.started_at else None

    @property
    def duration_s(self) -> float | None:
        s = self.summary
        if s.started_at is None or s.ended_at is None:
            return None
        return max(0.0, epoch_of(s.ended_at) - epoch_of(s.started_at))

    def value(self, key: str) -> float | str | None:
        """The row's value for a sort key; None where the job has none."""
        s, m = self.summary, self.summary.metrics
        if key in ("ic", "rank_ic", "hit_rate", "loss", "val_loss"):
            return getattr(m, key) if m is not None else None
        found: dict[str, float | str | None] = {
            "started": self.started_epoch,
            "cost": s.cost_usd if s.launches else None,
            "duration": self.duration_s,
            "rows": s.train_rows,
            "steps": s.steps,
            "job": self.job_id,
        }
        return found[key]

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return {
            "job_id": self.job_id,
            "name": s.name,
            "tags": list(s.tags),
            "state": self.state,
            "phase": self.phase,
            "started_at": s.started_at,
            "ended_at": s.ended_at,
            "duration_s": self.duration_s,
            "symbols": list(s.symbols),
            "dates": s.date_span,
            "model": s.model,
            "loss": s.loss,
            "metrics": s.metrics.model_dump(mode="json") if s.metrics else None,
            "train_rows": s.train_rows,
            "steps": s.steps,
            "cost_usd": round(s.cost_usd, 6) if s.launches else None,
            "attempts": len(s.attempts),
            "reason": s.reason if self.state != "committed" else None,
        }


@dataclass(frozen=True)
class Filters:
    symbols: Sequence[str] = ()
    """Jobs that trained on any of these."""
    tags: Sequence[str] = ()
    """Jobs with every one of these tags."""
    since: float | None = None
    """Epoch seconds: jobs started at or after."""
    states: Sequence[str] = ()
    sort: str = "started"
    reverse: bool = False
    limit: int | None = None

    def keep(self, row: JobRow) -> bool:
        s = row.summary
        if self.symbols and not set(self.symbols) & set(s.symbols):
            return False
        if self.tags and not set(self.tags) <= set(s.tags):
            return False
        if self.states and row.state not in self.states:
            return False
        started = row.started_epoch
        return self.since is None or (started is not None and started >= self.since)


def list_history(
    store: ObjectStore, layout: Layout, filters: Filters | None = None
) -> list[JobRow]:
    """Every job under `ml-artifacts/` in `layout`'s artifacts bucket that passes `filters`,
    sorted by `filters.sort` (best or newest first; jobs without the value last)."""
    filters = filters or Filters()
    if filters.sort not in SORT_KEYS:
        raise UsageError(f"--sort {filters.sort!r}: choose one of {', '.join(SORT_KEYS)}")
    ids = [i for i in store.children(layout.jobs_root) if re.fullmatch(JOB_ID_PATTERN, i)]
    summaries = store.get_many([layout.job(i).summary for i in ids])
    rows: dict[str, JobRow] = {}
    rest = []
    for job_id, raw in zip(ids, summaries, strict=True):
        paths = layout.job(job_id)
        summary = _summary(raw, store.uri(paths.summary))
        if summary is not None and summary.committed:
            rows[job_id] = JobRow(job_id, "committed", None, summary)
        else:
            rest.append(job_id)
    rows.update(_rebuild(store, layout, rest))
    kept = [rows[i] for i in ids if i in rows and filters.keep(rows[i])]
    return _sorted(kept, filters)[: filters.limit]


def list_sweeps(store: ObjectStore, layout: Layout) -> list[SweepRecord]:
    """Every sweep under `ml-artifacts/` (each folder with a `sweep.json`), newest first."""
    ids = [i for i in store.children(layout.jobs_root) if re.fullmatch(JOB_ID_PATTERN, i)]
    locs = [layout.job(i).sweep for i in ids]
    found = [
        parse_record(SweepRecord, raw, store.uri(loc))
        for loc, raw in zip(locs, store.get_many(locs), strict=True)
        if raw is not None
    ]
    return sorted(found, key=lambda r: r.started_at, reverse=True)


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a day (`2026-05-01`, `20260501`), an ISO time, or an age (`90m`, `12h`,
    `7d`); epoch seconds."""
    now = time.time() if now is None else now
    ages = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([mhdw])", text.strip())
    if match:
        return now - float(match.group(1)) * ages[match.group(2)]
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {text!r}: write a day (2026-05-01), an ISO time, or an age (12h, 7d)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _summary(raw: bytes | None, where: str) -> JobSummary | None:
    if raw is None:
        return None
    try:
        return parse_record(JobSummary, raw, where)
    except VerificationError:  # an unreadable index entry: the job's own records say the rest
        return None


def _rebuild(store: ObjectStore, layout: Layout, job_ids: list[str]) -> dict[str, JobRow]:
    """Rows for jobs without a committed summary, from their other records, read at once. A
    sweep's folder (it holds `sweep.json`) is not a job: `list_sweeps` lists those."""
    paths = [layout.job(i) for i in job_ids]
    locs = [loc for p in paths for loc in (*record_locs(p), p.sweep)]
    raw = dict(zip(locs, store.get_many(locs), strict=True))
    now = time.time()
    rows = {}
    for p in paths:
        if raw[p.sweep] is not None:
            continue
        files = files_from(store, p, raw)
        if files.empty:
            continue  # a folder with nothing of a job in it (only a shipped log, say)
        state = state_of(files, now)
        rows[p.job_id] = JobRow(p.job_id, state, phase_of(files, state), _known(files, p.job_id))
    return rows


def _known(files: JobFiles, job_id: str) -> JobSummary:
    """The summary a job's records support: the stored one, else rebuilt from its spec and
    manifest (keeping what launches recorded), with its ending filled in."""
    stored = files.summary
    if stored is not None and (stored.committed or files.manifest is None):
        base = stored
    else:
        spec = files.spec
        built = summary_of(spec, files.manifest) if spec else JobSummary(job_id=job_id)
        base = with_launches(built, stored)
    update: dict[str, Any] = {}
    if base.started_at is None and files.status is not None:
        update["started_at"] = files.status.started_at
    failure = files.failure
    if failure is not None and not files.committed:
        update["reason"] = failure.reason
        update["ended_at"] = failure.failed_at
        if update.get("started_at", base.started_at) is None:
            update["started_at"] = failure.started_at
    return base.model_copy(update=update)


def _sorted(rows: list[JobRow], filters: Filters) -> list[JobRow]:
    descending = SORT_KEYS[filters.sort] != filters.reverse
    have = [r for r in rows if r.value(filters.sort) is not None]
    lack = [r for r in rows if r.value(filters.sort) is None]
    have.sort(key=lambda r: r.value(filters.sort), reverse=descending)  # type: ignore[arg-type, return-value]
    return have + lack


__all__ = [
    "SORT_KEYS",
    "STATES",
    "Filters",
    "JobRow",
    "list_history",
    "list_sweeps",
    "parse_since",
]
