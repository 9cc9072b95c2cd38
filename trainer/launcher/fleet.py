"""Several jobs launched together under one total budget (`launch A.yaml B.yaml --total-budget`).

Each job keeps its own limits; on top, every watch also stops its job (LIMIT, exit 7) once
what all of them have spent together reaches the total budget. Jobs are prepared one after
the other (so a bad spec fails before anything is rented for the next ones) and watched in
parallel. Ctrl-C stops every watch, and each launch destroys what it rented.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.errors import Cancelled, SpecError, TrainerError
from trainer.job.identity import resolve
from trainer.launcher.budget import SharedBudget
from trainer.launcher.events import Reporter
from trainer.launcher.launch import JobHandle, launch
from trainer.launcher.result import LaunchOptions
from trainer.launcher.session import open_session
from trainer.spec import JobSpec, load_spec
from trainer.store.base import ObjectStore


def launch_many(
    specs: Sequence[JobSpec | str | Path],
    *,
    options: LaunchOptions,
    reporter: Reporter,
    total_budget_usd: float | None = None,
    **session: Any,
) -> list[dict[str, Any]]:
    """Launch and watch every spec; the `result` event of each job, in spec order (a job
    that failed before renting has one too). Every dataset is pre-flighted, and so every job
    id known, before anything is rented."""
    loaded = [s if isinstance(s, JobSpec) else load_spec(s) for s in specs]
    resolved = [resolve(s, _store(s, session.get("store"))) for s in loaded]
    ids = [r.job_id for r in resolved]
    if len(set(ids)) != len(ids):
        raise SpecError("the same job twice", [f"job ids: {', '.join(ids)}"])
    budget = SharedBudget(total_budget_usd) if total_budget_usd else None
    handles: list[JobHandle] = []
    for job in resolved:
        try:
            handles.append(
                launch(job, options=options, reporter=reporter, budget=budget, **session)
            )
        except TrainerError:
            if not _result_of(reporter, job.job_id):  # failed before it could report
                for handle in handles:
                    handle.interrupt()
                    _wait(handle)
                raise
    threads = [threading.Thread(target=_wait, args=(h,), daemon=True) for h in handles]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except KeyboardInterrupt:
        for handle in handles:
            handle.interrupt()
        for thread in threads:
            thread.join()
        raise Cancelled("interrupted; every launch destroyed what it rented") from None
    return [_result_of(reporter, job_id) or {} for job_id in ids]


def _store(spec: JobSpec, store: ObjectStore | str | None) -> ObjectStore:
    """The store a launch of `spec` reads its dataset from."""
    if isinstance(store, ObjectStore):
        return store
    return open_session(store=store, read_only_buckets=(spec.storage.raw_bucket,)).store


def _wait(handle: JobHandle) -> None:
    with contextlib.suppress(TrainerError):  # its result event says what happened
        handle.wait()


def _result_of(reporter: Reporter, job_id: str) -> dict[str, Any] | None:
    found = [e for e in reporter.events if e["event"] == "result" and e["job_id"] == job_id]
    return found[-1] if found else None
