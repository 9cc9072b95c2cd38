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
from trainer.job.state import (
    JobFiles,
    State,
    finished,
    paths_of,
    phase_of,
    read_job,
    require_job,
    state_of,
)
from trainer.job.summary import report_command
from trainer.launcher.events import Reporter
from trainer.launcher.logtail import LogTail
from trainer.launcher.payload import job_of
from trainer.launcher.prefix import request_stop
from trainer.launcher.rent import live_instances
from trainer.launcher.result import rows_used
from trainer.launcher.session import Session
from trainer.launcher.states import InstanceState
from trainer.launcher.vast import Instance, VastApiError, VastAuthError
from trainer.store.layout import JobPaths, Layout
from trainer.store.records import AttemptRecord, EvalMetrics, FailureRecord, StatusDoc, epoch_of

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


def _state_text(files: JobFiles, live: bool | None) -> str:
    """`committed`, `failed`, `interrupted`, or `running (training)` and the like."""
    state = state_of(files, live=live)
    phase = phase_of(files, state)
    return f"{state} ({phase})" if phase else state


@dataclass(frozen=True)
class JobStatus:
    """What `status` shows of a job: its outcome and metrics from the store, and its live
    instances from Vast.ai when it may still run (`instances` None: not asked, or no key)."""

    job_id: str
    state: State
    phase: str | None
    """For a running job: starting, training or provisioning."""
    name: str
    metrics: EvalMetrics | None
    """The committed model's final validation metrics."""
    rows: dict[str, int] | None
    failure: FailureRecord | None
    progress: StatusDoc | None
    cost_usd: float | None
    """What every recorded launch spent; None when no launch recorded any (a local run)."""
    attempts: tuple[AttemptRecord, ...]
    started_at: str | None
    ended_at: str | None
    launcher_heartbeat_age_s: float | None
    detached: bool
    instances: list[dict[str, Any]] | None
    note: str | None
    """Why the instances are unknown, when they are."""
    artifacts: str
    report: str | None

    @property
    def committed(self) -> bool:
        return self.state == "committed"

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "phase": self.phase,
            "name": self.name,
            "committed": self.committed,
            "metrics": self.metrics.model_dump(mode="json") if self.metrics else None,
            "rows": self.rows,
            "failure": self.failure.model_dump(mode="json") if self.failure else None,
            "progress": self.progress.model_dump(mode="json") if self.progress else None,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "attempts": [a.model_dump(mode="json") for a in self.attempts],
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "launcher_heartbeat_age_s": self.launcher_heartbeat_age_s,
            "detached": self.detached,
            "instances": self.instances,
            "note": self.note,
            "artifacts": self.artifacts,
            "report": self.report,
        }


def job_status(session: Session, bucket: str, job_id: str) -> JobStatus:
    """The store first: a finished job needs no Vast.ai at all. A job that may still run
    is looked up on Vast.ai too; without a key its instances are shown as unknown."""
    paths = paths_of(bucket, job_id)
    store = session.store
    files = read_job(store, paths)
    live: list[Instance] | None = None
    note = None
    if not finished(files):
        try:
            live = live_instances(session.vast, job_id)
        except VastAuthError as exc:
            note = f"instances unknown: {exc.headline}"
    if files.empty and not live:
        require_job(store, paths)  # UnknownJob, unless something else is under the prefix
    state = state_of(files, live=bool(live) if live is not None else None)
    beat, summary, manifest = files.heartbeat, files.summary, files.manifest
    metrics = manifest.metrics if manifest is not None else None
    return JobStatus(
        job_id=job_id,
        state=state,
        phase=phase_of(files, state),
        name=files.spec.job.name if files.spec else (summary.name if summary else ""),
        metrics=metrics.final if metrics else None,
        rows=rows_used(metrics) if metrics else None,
        failure=files.failure,
        progress=files.status,
        cost_usd=summary.cost_usd if summary is not None and summary.launches else None,
        attempts=summary.attempts if summary is not None else (),
        started_at=_started(files),
        ended_at=_ended(files),
        launcher_heartbeat_age_s=round(time.time() - beat.updated_at, 1) if beat else None,
        detached=bool(beat and beat.detached),
        instances=None if live is None else [_instance_json(i) for i in live],
        note=note,
        artifacts=store.uri(paths.dir),
        report=report_command(job_id, store.root, bucket) if manifest else None,
    )


def _started(files: JobFiles) -> str | None:
    if files.manifest is not None:
        return files.manifest.started_at
    return files.status.started_at if files.status is not None else None


def _ended(files: JobFiles) -> str | None:
    if files.manifest is not None:
        return files.manifest.ended_at
    return files.failure.failed_at if files.failure is not None else None


def job_logs(session: Session, bucket: str, job_id: str, tail: int = 200) -> list[str]:
    """The live container's log tail, else the newest log a container shipped to the store."""
    paths = _paths(bucket, job_id)
    live = live_instances(session.vast, job_id)
    if live:
        text = session.vast.logs(max(i.id for i in live), tail=tail)
        if text:
            return [line for line in text.splitlines() if line.strip()][-tail:]
    else:
        require_job(session.store, paths)  # no instance and nothing stored: UnknownJob
    shipped = session.store.list(paths.logs)
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
    (so a launcher watching it ends instead of renting again) and a failure record. A job
    with no instance and nothing in the store is UnknownJob, and nothing is written."""
    reporter = reporter or Reporter(job_id)
    paths = _paths(bucket, job_id)
    instances = live_instances(session.vast, job_id)
    ids = [i.id for i in instances]
    if not ids:
        require_job(session.store, paths)  # a job that never existed gets nothing written
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
                "state": _state_text(files, True),
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
