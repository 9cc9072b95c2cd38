"""The launcher's side of a job's prefix `ml-artifacts/<jobId>/`: what it writes, what it reads.

Written here: `launcher-heartbeat.json` (read by the container's dead-man switch) and
`stop-requested.json` (written by `stop` before it destroys anything, so a launcher watching
the job ends instead of renting again when the container reports it was stopped). What the
job's records say about it is read by `trainer.job.state`.
"""

from __future__ import annotations

import time

from trainer.errors import ObjectNotFound, PreconditionFailed
from trainer.spec import JobSpec, dump_spec
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.records import (
    LauncherHeartbeat,
    StopRequest,
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
