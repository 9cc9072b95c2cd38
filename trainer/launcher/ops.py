"""`status`, `logs`, `stop`, `list` and `reap`: jobs seen through their labels and their prefix.

Ownership: an instance belongs to a job when its label is `quantlab:<jobId>`; no other
instance is ever listed or destroyed. What the job is doing is read from its prefix
`ml-artifacts/<jobId>/` in the artifacts bucket (see prefix).

`reap` destroys a labelled instance when
- its job is committed, or failed after the instance was created;
- it is past its deadline: created more than provision_timeout + max_runtime + 10 minutes ago;
- its launcher heartbeat is missing, or older than the job's
  `limits.heartbeat_timeout_minutes` (or `stale_after_s`) and not marked detached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainer.job.artifacts import write_failure
from trainer.launcher.events import Reporter
from trainer.launcher.logtail import LogTail
from trainer.launcher.payload import job_of
from trainer.launcher.prefix import JobFiles, read_job, request_stop
from trainer.launcher.rent import live_instances
from trainer.launcher.session import Session
from trainer.launcher.states import InstanceState
from trainer.launcher.vast import Instance, VastApiError
from trainer.store.layout import JobPaths, Layout
from trainer.store.records import FailureRecord, StatusDoc, epoch_of

DEADLINE_GRACE_S = 600.0


def _paths(bucket: str, job_id: str) -> JobPaths:
    return Layout(artifacts_bucket=bucket).job(job_id)


def spent(inst: Instance, now: float | None = None) -> float:
    """Dollars an instance has cost so far, at its current price since it was created."""
    now = time.time() if now is None else now
    return max(0.0, now - inst.start_date) / 3600 * inst.dph_total if inst.start_date else 0.0


def _instance_json(inst: Instance) -> dict[str, Any]:
    age = round(max(0.0, time.time() - inst.start_date), 1) if inst.start_date else None
    return {
        "instance_id": inst.id,
        "state": inst.state.value,
        "actual_status": inst.actual_status,
        "status_msg": inst.status_msg,
        "gpu": f"{inst.num_gpus}× {inst.gpu_name}",
        "dph": inst.dph_total,
        "machine_id": inst.machine_id,
        "age_s": age,
        "spent_usd": round(spent(inst), 6),
    }


def _state(files: JobFiles, live: bool) -> str:
    if files.committed:
        return "succeeded"
    if live:
        return files.status.state if files.status is not None else "provisioning"
    return "failed" if files.failure else "not running"


@dataclass(frozen=True)
class JobStatus:
    """What `status` shows of a job: its prefix, and its live instances."""

    job_id: str
    state: str
    committed: bool
    failure: FailureRecord | None
    progress: StatusDoc | None
    launcher_heartbeat_age_s: float | None
    detached: bool
    instances: list[dict[str, Any]]
    artifacts: str

    def to_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "failure": self.failure.model_dump(mode="json") if self.failure else None,
            "progress": self.progress.model_dump(mode="json") if self.progress else None,
        }


def job_status(session: Session, bucket: str, job_id: str) -> JobStatus:
    paths = _paths(bucket, job_id)
    files = read_job(session.store, paths)
    live = live_instances(session.vast, job_id)
    beat = files.heartbeat
    return JobStatus(
        job_id=job_id,
        state=_state(files, bool(live)),
        committed=files.committed,
        failure=files.failure,
        progress=files.status,
        launcher_heartbeat_age_s=round(time.time() - beat.updated_at, 1) if beat else None,
        detached=bool(beat and beat.detached),
        instances=[_instance_json(i) for i in live],
        artifacts=str(paths.dir),
    )


def job_logs(session: Session, bucket: str, job_id: str, tail: int = 200) -> list[str]:
    """The live container's log tail, else the newest log a container shipped to the store."""
    live = live_instances(session.vast, job_id)
    if live:
        text = session.vast.logs(max(i.id for i in live), tail=tail)
        if text:
            return [line for line in text.splitlines() if line.strip()][-tail:]
    shipped = session.store.list(_paths(bucket, job_id).logs)
    if not shipped:
        return []
    newest = max(shipped, key=lambda o: o.loc.key)
    return session.store.get(newest.loc).decode("utf-8", "replace").splitlines()[-tail:]


def follow_logs(
    session: Session, job_id: str, emit: Callable[[str], None], poll_s: float = 5.0
) -> None:
    """Print new lines of the job's newest live instance until none is left."""
    follow = LogTail()
    while live := live_instances(session.vast, job_id):
        try:
            for line in follow.update(session.vast.logs(max(i.id for i in live))):
                emit(line)
        except VastApiError:
            pass  # a snapshot that failed is taken again at the next round
        time.sleep(poll_s)


def stop_job(
    session: Session, bucket: str, job_id: str, reporter: Reporter | None = None
) -> list[int]:
    """Destroy every instance of the job. Unless the job is committed, first a stop request
    (so a launcher watching it ends instead of renting again) and a failure record."""
    reporter = reporter or Reporter(job_id)
    paths = _paths(bucket, job_id)
    instances = live_instances(session.vast, job_id)
    ids = [i.id for i in instances]
    if not session.store.exists(paths.manifest):
        request_stop(session.store, paths, "quantlab-train stop")
        write_failure(
            session.store, paths, "stopped by user", "StoppedByUser", "user", instances=tuple(ids)
        )
    for instance_id in ids:
        session.vast.destroy_instance(instance_id)
        reporter.emit(
            "destroyed",
            "stopped by user",
            instance_id=instance_id,
            say=f"instance {instance_id} destroyed",
        )
    return ids


def _labelled(session: Session) -> dict[str, list[Instance]]:
    jobs: dict[str, list[Instance]] = {}
    for inst in session.vast.list_instances():
        job_id = job_of(inst.label)
        if job_id is not None and inst.state is not InstanceState.GONE:
            jobs.setdefault(job_id, []).append(inst)
    return dict(sorted(jobs.items()))


def list_jobs(session: Session, bucket: str) -> list[dict[str, Any]]:
    """Jobs with live instances, by label, with what their prefix says."""
    found = []
    for job_id, instances in _labelled(session).items():
        files = read_job(session.store, _paths(bucket, job_id))
        found.append(
            {
                "job_id": job_id,
                "state": _state(files, True),
                "instances": [_instance_json(i) for i in instances],
                "spent_usd": round(sum(spent(i) for i in instances), 6),
            }
        )
    return found


def reap_reason(
    inst: Instance, files: JobFiles, now: float, stale_after_s: float | None
) -> str | None:
    """Why this labelled instance should go (see the module docstring), or None to keep it."""
    if files.committed:
        return "its job is committed"
    failure = files.failure
    if failure is not None and epoch_of(failure.failed_at) >= inst.start_date - 1:
        return f"its job failed: {failure.reason}"
    limits = files.limits
    deadline = (
        inst.start_date + (limits.provision_timeout_minutes + limits.max_runtime_minutes) * 60
    )
    if inst.start_date and now > deadline + DEADLINE_GRACE_S:
        return "it is past its deadline (provision_timeout + max_runtime)"
    beat = files.heartbeat
    if beat is None:
        return "no launcher heartbeat for its job"
    if beat.detached:
        return None
    stale = stale_after_s if stale_after_s is not None else limits.heartbeat_timeout_minutes * 60
    age = now - beat.updated_at
    return f"its launcher stopped: heartbeat {age:.0f} s old" if 0 < stale < age else None


def reap(
    session: Session,
    bucket: str,
    *,
    dry_run: bool = False,
    stale_after_s: float | None = None,
    reporter: Reporter | None = None,
) -> list[dict[str, Any]]:
    """Destroy labelled instances no live job needs; one record per labelled instance."""
    reporter = reporter or Reporter()
    now, records = time.time(), []
    for job_id, instances in _labelled(session).items():
        files = read_job(session.store, _paths(bucket, job_id))
        for inst in instances:
            reason = reap_reason(inst, files, now, stale_after_s)
            action = "kept" if reason is None else ("would destroy" if dry_run else "destroyed")
            if reason is not None and not dry_run:
                session.vast.destroy_instance(inst.id)
            why = reason or "its job is live"
            records.append(
                {"job_id": job_id, "instance_id": inst.id, "action": action, "reason": why}
            )
            reporter.emit(
                "reap",
                why,
                job=job_id,
                instance_id=inst.id,
                action=action,
                say=f"{action} instance {inst.id} ({job_id}): {why}",
            )
    return records
