"""The launcher's side of a job's prefix `ml-artifacts/<jobId>/`: what it writes, what it reads.

Written here: `launcher-heartbeat.json` ({"updated_at": epoch s, "detached": bool,
"instances": [...]}, read by the container's dead-man switch) and `stop-requested.json`
(written by `stop` before it destroys anything, so a launcher watching the job ends instead of
renting again when the container reports it was stopped). Read: `jobspec.yaml`, `status.json`,
`failure.json` and `manifest.json`, all written by the job.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trainer.artifacts import FAILURE, MANIFEST
from trainer.container.status import STATUS
from trainer.container.watchdog import LAUNCHER_HEARTBEAT
from trainer.errors import EXIT_CONFLICT, ObjectNotFound, PreconditionFailed, SpecError
from trainer.layout import Layout
from trainer.spec import JobSpec, dump_spec, parse_spec
from trainer.spec.model import LimitsSpec
from trainer.storage.base import ObjectStore

JOBSPEC = "jobspec.yaml"
STOP_REQUEST = "stop-requested.json"


class JobConflict(PreconditionFailed):
    """The job id is taken by a different spec."""

    exit_code = EXIT_CONFLICT


def write_heartbeat(
    store: ObjectStore, layout: Layout, job_id: str, detached: bool, instances: list[int]
) -> None:
    body = {"updated_at": time.time(), "detached": detached, "instances": instances}
    store.put(layout.job_file(job_id, LAUNCHER_HEARTBEAT), json.dumps(body).encode())


def request_stop(store: ObjectStore, layout: Layout, job_id: str, by: str) -> None:
    body = {"requested_at": time.time(), "by": by}
    store.put(layout.job_file(job_id, STOP_REQUEST), json.dumps(body).encode())


def read_json(store: ObjectStore, layout: Layout, job_id: str, name: str) -> dict[str, Any] | None:
    """A JSON object of the job's prefix; None when absent or not an object."""
    try:
        found = json.loads(store.get(layout.job_file(job_id, name)))
    except (ObjectNotFound, ValueError):
        return None
    return found if isinstance(found, dict) else None


def epoch(iso: object) -> float:
    """Epoch seconds of a UTC ISO time as the job writes them; ValueError when it is not one."""
    return datetime.fromisoformat(str(iso)).timestamp()


def check_spec_matches(spec: JobSpec, store: ObjectStore, layout: Layout) -> None:
    """A job id names one spec: refuse to reuse it for a different one that ran or runs."""
    loc = layout.job_file(spec.job_id, JOBSPEC)
    try:
        existing = store.get(loc).decode("utf-8")
    except ObjectNotFound:
        return
    if existing != dump_spec(spec):
        raise JobConflict(
            f"{store.uri(loc)} holds a different spec for job id {spec.job_id}, which ran or is "
            "running; give this spec another `job.id` (or drop it to derive one)"
        )


@dataclass(frozen=True)
class JobFiles:
    """What a job's prefix says about it."""

    committed: bool
    failure: dict[str, Any] | None
    status: dict[str, Any] | None
    heartbeat: dict[str, Any] | None
    limits: LimitsSpec
    """From its jobspec.yaml; the defaults when that is missing or unreadable."""


def read_job(store: ObjectStore, layout: Layout, job_id: str) -> JobFiles:
    limits = LimitsSpec()
    try:
        text = store.get(layout.job_file(job_id, JOBSPEC)).decode("utf-8")
        limits = parse_spec(text, source=job_id).limits
    except (ObjectNotFound, SpecError, UnicodeDecodeError):
        pass
    return JobFiles(
        committed=store.exists(layout.job_file(job_id, MANIFEST)),
        failure=read_json(store, layout, job_id, FAILURE),
        status=read_json(store, layout, job_id, STATUS),
        heartbeat=read_json(store, layout, job_id, LAUNCHER_HEARTBEAT),
        limits=limits,
    )
