"""The launcher's side of a job's prefix `ml-artifacts/<jobId>/`: what it writes, what it reads.

Written here: `launcher-heartbeat.json` (read by the container's dead-man switch) and
`stop-requested.json` (written by `stop` before it destroys anything, so a launcher watching
the job ends instead of renting again when the container reports it was stopped). Read:
`jobspec.yaml`, `status.json`, `failure.json` and `manifest.json`, all written by the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trainer.errors import ObjectNotFound, PreconditionFailed, SpecError, VerificationError
from trainer.spec import JobSpec, dump_spec, parse_spec
from trainer.spec.sections import LimitsSpec
from trainer.store.base import Loc, ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.records import (
    FailureRecord,
    LauncherHeartbeat,
    R,
    StatusDoc,
    StopRequest,
    read_record,
    write_record,
)


class JobConflict(PreconditionFailed):
    """The job id is taken by a different spec."""


def write_heartbeat(
    store: ObjectStore, paths: JobPaths, detached: bool, instances: list[int]
) -> None:
    beat = LauncherHeartbeat(updated_at=time.time(), detached=detached, instances=tuple(instances))
    write_record(store, paths.launcher_heartbeat, beat)


def request_stop(store: ObjectStore, paths: JobPaths, by: str) -> None:
    write_record(store, paths.stop_request, StopRequest(requested_at=time.time(), by=by))


def check_spec_matches(spec: JobSpec, store: ObjectStore, paths: JobPaths) -> None:
    """A job id names one spec: refuse to reuse it for a different one that ran or runs."""
    try:
        existing = store.get(paths.jobspec).decode("utf-8")
    except ObjectNotFound:
        return
    if existing != dump_spec(spec):
        raise JobConflict(
            f"{store.uri(paths.jobspec)} holds a different spec for job id {spec.job_id}, which "
            "ran or is running; give this spec another `job.id` (or drop it to derive one)"
        )


@dataclass(frozen=True)
class JobFiles:
    """What a job's prefix says about it."""

    committed: bool
    failure: FailureRecord | None
    status: StatusDoc | None
    heartbeat: LauncherHeartbeat | None
    limits: LimitsSpec
    """From its jobspec.yaml; the defaults when that is missing or unreadable."""


def read_job(store: ObjectStore, paths: JobPaths) -> JobFiles:
    limits = LimitsSpec()
    try:
        text = store.get(paths.jobspec).decode("utf-8")
        limits = parse_spec(text, source=paths.job_id).limits
    except (ObjectNotFound, SpecError, UnicodeDecodeError):
        pass
    return JobFiles(
        committed=store.exists(paths.manifest),
        failure=_lenient(store, paths.failure, FailureRecord),
        status=_lenient(store, paths.status, StatusDoc),
        heartbeat=_lenient(store, paths.launcher_heartbeat, LauncherHeartbeat),
        limits=limits,
    )


def _lenient(store: ObjectStore, loc: Loc, kind: type[R]) -> R | None:
    """A record for a report: an unreadable one reads as absent, never ends a command."""
    try:
        return read_record(store, loc, kind)
    except VerificationError:
        return None
