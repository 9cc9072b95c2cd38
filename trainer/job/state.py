"""What a job's prefix `ml-artifacts/<jobId>/` says about it: its records, read together, and
the one state every command shows (committed, failed, interrupted or running).

`status`, `jobs`, `list` and `reap` all judge a job from here, from the store alone; only a
job that may still be running needs Vast.ai to say whether an instance is live."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from trainer.errors import SpecError, UnknownJob, UsageError, VerificationError
from trainer.spec import JobSpec, parse_spec
from trainer.spec.sections import LimitsSpec
from trainer.store.base import Loc, ObjectStore
from trainer.store.layout import JobPaths, Layout
from trainer.store.records import (
    Cause,
    FailureRecord,
    JobManifest,
    JobSummary,
    LauncherHeartbeat,
    R,
    StatusDoc,
    epoch_of,
    parse_record,
)

State = Literal["committed", "failed", "interrupted", "running"]
STATES: tuple[State, ...] = ("committed", "failed", "interrupted", "running")

STALE_STATUS_S = 300.0
"""A `status.json` not rewritten for this long belongs to a container that is gone (it is
rewritten every `QUANTLAB_STATUS_EVERY_SEC`, 30 s by default)."""

FAILED_OUTCOMES = frozenset({"failed", "limit_exceeded", "invalid_spec", "data_error"})
"""Launch outcomes that mean the job itself failed, not the hosts under it."""


@dataclass(frozen=True)
class JobFiles:
    """A job's records as stored; any may be absent (or unreadable, which reads as absent)."""

    committed: bool
    failure: FailureRecord | None
    status: StatusDoc | None
    heartbeat: LauncherHeartbeat | None
    limits: LimitsSpec
    """From its jobspec.yaml; the defaults when that is missing or unreadable."""
    manifest: JobManifest | None = None
    summary: JobSummary | None = None
    spec: JobSpec | None = None
    shipped_log: bool = False
    """Only in `require_job`'s answer for an otherwise empty prefix: something is there."""

    @property
    def empty(self) -> bool:
        return not (
            self.committed
            or self.failure
            or self.status
            or self.heartbeat
            or self.summary
            or self.spec
            or self.shipped_log
        )


def paths_of(bucket: str, job_id: str) -> JobPaths:
    """The job's paths; UsageError (exit 2) for an id that cannot name a job folder."""
    try:
        return Layout(artifacts_bucket=bucket).job(job_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def record_locs(paths: JobPaths) -> list[Loc]:
    """Every object `files_from` reads."""
    return [
        paths.manifest,
        paths.failure,
        paths.status,
        paths.launcher_heartbeat,
        paths.summary,
        paths.jobspec,
    ]


def read_job(store: ObjectStore, paths: JobPaths) -> JobFiles:
    """Every record of the job, read concurrently."""
    locs = record_locs(paths)
    return files_from(store, paths, dict(zip(locs, store.get_many(locs), strict=True)))


def files_from(store: ObjectStore, paths: JobPaths, raw: Mapping[Loc, bytes | None]) -> JobFiles:
    """The job's records from the bytes of `record_locs(paths)` (None: absent)."""

    def record(loc: Loc, kind: type[R]) -> R | None:
        return _lenient(store, loc, raw[loc], kind)

    spec = None
    text = raw[paths.jobspec]
    if text is not None:
        try:
            spec = parse_spec(text.decode("utf-8"), source=store.uri(paths.jobspec))
        except (SpecError, UnicodeDecodeError):
            spec = None
    return JobFiles(
        committed=raw[paths.manifest] is not None,
        failure=record(paths.failure, FailureRecord),
        status=record(paths.status, StatusDoc),
        heartbeat=record(paths.launcher_heartbeat, LauncherHeartbeat),
        limits=spec.limits if spec is not None else LimitsSpec(),
        manifest=record(paths.manifest, JobManifest),
        summary=record(paths.summary, JobSummary),
        spec=spec,
    )


def require_job(store: ObjectStore, paths: JobPaths) -> JobFiles:
    """`read_job`, or UnknownJob (exit 11) when nothing at all is under the job's prefix."""
    files = read_job(store, paths)
    if files.empty and store.list(paths.dir):
        return JobFiles(**{**files.__dict__, "shipped_log": True})
    if files.empty:
        raise UnknownJob(
            f"no job {paths.job_id}: nothing under {store.uri(paths.dir)}; see "
            "`quantlab-train jobs` for the jobs there (a staging spec's jobs need --bucket)"
        )
    return files


def state_of(files: JobFiles, now: float | None = None, live: bool | None = None) -> State:
    """The job's state. `live`: whether Vast.ai shows an instance for it (None: not asked).

    Committed when the manifest is there. Running while its container reports (a fresh
    `status.json` since its last failure), while an instance is live, or while its launcher
    beats before any container started. Otherwise the last ending decides: the job's own
    failure or limit → failed; anything from outside (a stop, a lost host, a launcher that
    gave up or vanished) → interrupted."""
    now = time.time() if now is None else now
    if files.committed:
        return "committed"
    status, failure = files.status, files.failure
    if status is not None and _reporting(status, now) and not _ended_after(failure, status):
        return "running"
    if live:
        return "running"
    if failure is not None and not (status is not None and _started_after(status, failure)):
        return _ending(failure.cause)
    if status is not None and status.state in ("failed", "stopped"):
        return _ending(status.cause or ("error" if status.state == "failed" else "signal"))
    outcome = files.summary.outcome if files.summary is not None else None
    if outcome is not None:
        return "failed" if outcome in FAILED_OUTCOMES else "interrupted"
    beat = files.heartbeat
    waiting_s = files.limits.provision_timeout_minutes * 60 + STALE_STATUS_S
    if status is None and beat and not beat.detached and now - beat.updated_at < waiting_s:
        return "running"  # renting or provisioning: no container has reported yet
    return "interrupted"


def phase_of(files: JobFiles, state: State) -> str | None:
    """For a running job: what its container says (starting, training), or provisioning."""
    if state != "running":
        return None
    if files.status is not None and files.status.state in ("starting", "training"):
        return files.status.state
    return "provisioning"


def finished(files: JobFiles, now: float | None = None) -> bool:
    """Committed, or ended with a failure record that no later container superseded and no
    launcher still at work on it (one may be renting the next instance): no instance of it
    should be live, so Vast.ai need not be asked."""
    now = time.time() if now is None else now
    state = state_of(files, now, live=False)
    if state == "committed":
        return True
    beat = files.heartbeat
    launcher_at_work = beat is not None and not beat.detached and now - beat.updated_at < 120
    return state != "running" and files.failure is not None and not launcher_at_work


def _ending(cause: Cause) -> State:
    """The job's own error or limit is a failure; anything from outside, an interruption."""
    return "failed" if cause in ("error", "limit") else "interrupted"


def _reporting(status: StatusDoc, now: float) -> bool:
    if status.state not in ("starting", "training"):
        return False
    updated = status.updated_at_epoch
    return updated is not None and now - updated < STALE_STATUS_S


def _ended_after(failure: FailureRecord | None, status: StatusDoc) -> bool:
    return failure is not None and not _started_after(status, failure)


def _started_after(status: StatusDoc, failure: FailureRecord) -> bool:
    """The container writing `status` started after `failure` was recorded (a new attempt)."""
    return epoch_of(status.started_at) > epoch_of(failure.failed_at)


def _lenient(store: ObjectStore, loc: Loc, raw: bytes | None, kind: type[R]) -> R | None:
    """A record for a report: an unreadable one reads as absent, never ends a command."""
    if raw is None:
        return None
    try:
        return parse_record(kind, raw, store.uri(loc))
    except VerificationError:
        return None
