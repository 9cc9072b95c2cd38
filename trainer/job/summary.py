"""The job's entry in the history (`summary.json`): written right after the manifest, updated by
every launch that ends with what it spent.

Two writers share the document (the job at commit, the launcher at its end, in either order),
so every write is a read-modify-write that only lands on the version it read. Neither may fail
the work it describes: the summary is an index, and a job without one is still read from its
other records."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Sequence

from trainer.errors import TrainerError
from trainer.spec import JobSpec
from trainer.store import default_store_root
from trainer.store.base import ObjectStore
from trainer.store.layout import ARTIFACTS_BUCKET, JobPaths
from trainer.store.records import AttemptRecord, JobManifest, JobSummary, update_record

log = logging.getLogger("quantlab.job")

Change = Callable[[JobSummary | None], JobSummary]


def summary_of(spec: JobSpec, manifest: JobManifest | None) -> JobSummary:
    """What the spec says about the job, and what its manifest says when it is committed."""
    facts = JobSummary(
        job_id=spec.job_id,
        name=spec.job.name,
        tags=tuple(spec.job.tags),
        symbols=tuple(spec.data.symbols),
        dates=tuple(spec.data.dates.resolve()),
        model=spec.model.type,
        loss=spec.train.loss,
    )
    if manifest is None:
        return facts
    m = manifest.metrics
    return facts.model_copy(
        update={
            "committed": True,
            "started_at": manifest.started_at,
            "ended_at": manifest.ended_at,
            "metrics": m.final,
            "train_rows": m.rows_seen_all_ranks,
            "steps": m.steps,
            "train_seconds": m.train_seconds,
        }
    )


def record_commit(
    store: ObjectStore, paths: JobPaths, spec: JobSpec, manifest: JobManifest
) -> None:
    """After the manifest: the committed facts, keeping what launches already recorded."""
    fresh = summary_of(spec, manifest)
    _update(store, paths, lambda current: with_launches(fresh, current))


LAUNCH_FIELDS = ("outcome", "reason", "cost_usd", "launches", "attempts")
"""What launches record in a summary, kept when the job's facts are written again."""


def with_launches(fresh: JobSummary, recorded: JobSummary | None) -> JobSummary:
    """`fresh` facts with what launches recorded in `recorded`."""
    if recorded is None:
        return fresh
    return fresh.model_copy(update={k: getattr(recorded, k) for k in LAUNCH_FIELDS})


def record_launch(
    store: ObjectStore,
    paths: JobPaths,
    spec: JobSpec,
    manifest: JobManifest | None,
    *,
    outcome: str,
    reason: str,
    attempts: Sequence[AttemptRecord],
) -> None:
    """At a launch's end: its outcome, and its instances and dollars added to earlier ones'.
    An instance already recorded (two launchers watching one job) is counted once."""

    def change(current: JobSummary | None) -> JobSummary:
        base = current if current is not None and current.committed else None
        base = base or summary_of(spec, manifest)
        before = current or base
        number = before.launches + 1
        known = {a.instance_id for a in before.attempts}
        new = [
            a.model_copy(update={"launch": number}) for a in attempts if a.instance_id not in known
        ]
        return base.model_copy(
            update={
                "outcome": outcome,
                "reason": reason,
                "cost_usd": before.cost_usd + sum(a.cost_usd for a in new),
                "launches": number,
                "attempts": (*before.attempts, *new),
            }
        )

    _update(store, paths, change)


def _update(store: ObjectStore, paths: JobPaths, change: Change) -> None:
    try:
        update_record(store, paths.summary, JobSummary, change)
    except TrainerError as exc:
        log.warning("could not write the history entry %s: %s", store.uri(paths.summary), exc)


def report_command(job_id: str, store_root: str, bucket: str) -> str:
    """`quantlab-train report JOB --open`, with the store and bucket when not the defaults."""
    parts = ["quantlab-train", "report", job_id]
    if store_root.rstrip("/") != default_store_root().rstrip("/"):
        parts += ["--store", store_root]
    if bucket != ARTIFACTS_BUCKET:
        parts += ["--bucket", bucket]
    return shlex.join([*parts, "--open"])
