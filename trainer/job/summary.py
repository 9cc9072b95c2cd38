"""The job's entry in the history (`summary.json`): written right after the manifest, updated by
every launch that ends with what it spent.

Two writers share the document (the job at commit, the launcher at its end, in either order),
so every write is a read-modify-write that only lands on the version it read. Neither may fail
the work it describes: the summary is an index, and a job without one is still read from its
other records."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from trainer.errors import TrainerError
from trainer.spec import JobSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.records import AttemptRecord, JobManifest, JobSummary, update_record

log = logging.getLogger("quantlab.job")

BUILT_IN_LOSS = "mse"
"""The loss the training loop minimises."""

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
        loss=BUILT_IN_LOSS,
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

    def change(current: JobSummary | None) -> JobSummary:
        if current is None:
            return fresh
        return fresh.model_copy(
            update={
                "outcome": current.outcome,
                "reason": current.reason,
                "cost_usd": current.cost_usd,
                "launches": current.launches,
                "attempts": current.attempts,
            }
        )

    _update(store, paths, change)


def record_launch(
    store: ObjectStore,
    paths: JobPaths,
    spec: JobSpec,
    manifest: JobManifest | None,
    *,
    outcome: str,
    reason: str,
    cost_usd: float,
    attempts: Sequence[AttemptRecord],
) -> None:
    """At a launch's end: its outcome, and its instances and dollars added to earlier ones'."""

    def change(current: JobSummary | None) -> JobSummary:
        base = current if current is not None and current.committed else None
        base = base or summary_of(spec, manifest)
        before = current or base
        number = before.launches + 1
        return base.model_copy(
            update={
                "outcome": outcome,
                "reason": reason,
                "cost_usd": before.cost_usd + cost_usd,
                "launches": number,
                "attempts": (
                    *before.attempts,
                    *(a.model_copy(update={"launch": number}) for a in attempts),
                ),
            }
        )

    _update(store, paths, change)


def _update(store: ObjectStore, paths: JobPaths, change: Change) -> None:
    try:
        update_record(store, paths.summary, JobSummary, change)
    except TrainerError as exc:
        log.warning("could not write the history entry %s: %s", store.uri(paths.summary), exc)
