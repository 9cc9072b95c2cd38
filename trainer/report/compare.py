"""`compare JOB JOB… [--vs production]`: committed jobs side by side, and the one the promotion
gate would prefer.

Each job is put to its own spec's gate (`promotion.max_ic_drop`, `promotion.min_ic`) against
what is live for its symbol (with `--vs production`; without it, against nothing, so only
`min_ic` can refuse). Of the jobs the gate lets through, it prefers the highest validation IC,
then the lower validation loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.errors import UsageError
from trainer.job.state import paths_of, require_job, state_of
from trainer.promotion.gate import GateRefused, check_gate, resolve_symbol
from trainer.promotion.production import production_paths, read_live
from trainer.spec import parse_spec
from trainer.spec.sections import JobSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout
from trainer.store.records import (
    EvalMetrics,
    JobManifest,
    JobSummary,
    ProductionManifest,
    read_record,
)


@dataclass(frozen=True)
class Entry:
    """One job in the comparison."""

    job_id: str
    name: str
    symbol: str
    metrics: EvalMetrics
    train_rows: int
    steps: int
    train_seconds: float
    cost_usd: float | None
    passed: bool
    gate: str
    """How the gate decided: `passed: …` or `gate refused: …`."""

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "metrics": self.metrics.model_dump(mode="json")}


@dataclass(frozen=True)
class Comparison:
    entries: tuple[Entry, ...]
    production: dict[str, ProductionManifest | None]
    """Per symbol, what is live (only with `--vs production`)."""
    preferred: str | None
    """The job the gate would prefer; None when it refuses them all."""
    why: str

    def to_json(self) -> dict[str, Any]:
        return {
            "jobs": [e.to_json() for e in self.entries],
            "production": {
                s: (m.model_dump(mode="json") if m else None) for s, m in self.production.items()
            },
            "preferred": self.preferred,
            "why": self.why,
        }


def compare(
    store: ObjectStore,
    bucket: str,
    job_ids: Sequence[str],
    *,
    vs_production: bool = False,
    symbol: str | None = None,
) -> Comparison:
    if len(set(job_ids)) != len(job_ids):
        raise UsageError(f"the same job twice: {', '.join(job_ids)}")
    layout = Layout(artifacts_bucket=bucket)
    live: dict[str, ProductionManifest | None] = {}
    entries = []
    for job_id in job_ids:
        manifest, spec = _committed(store, bucket, job_id)
        chosen = resolve_symbol(symbol, tuple(spec.data.symbols), job_id)
        if vs_production and chosen not in live:
            found = read_live(store, production_paths(layout, chosen))
            live[chosen] = found.manifest if found is not None else None
        entries.append(_entry(store, bucket, job_id, manifest, spec, chosen, live.get(chosen)))
    passed = [e for e in entries if e.passed]
    if not passed:
        return Comparison(tuple(entries), live, None, "the gate refuses every job")
    best = max(passed, key=lambda e: (e.metrics.ic, -e.metrics.val_loss))
    against = "production" if vs_production else "no production model"
    why = (
        f"{best.job_id}: the highest validation IC ({best.metrics.ic:.4f}) of the "
        f"{len(passed)} job(s) its gate lets replace {against}"
    )
    return Comparison(tuple(entries), live, best.job_id, why)


def _committed(store: ObjectStore, bucket: str, job_id: str) -> tuple[JobManifest, JobSpec]:
    paths = paths_of(bucket, job_id)
    manifest = read_record(store, paths.manifest, JobManifest)
    if manifest is None:
        files = require_job(store, paths)
        raise UsageError(f"job {job_id} is {state_of(files)}, not committed: nothing to compare")
    text = store.get(paths.jobspec).decode("utf-8")
    return manifest, parse_spec(text, source=store.uri(paths.jobspec))


def _entry(
    store: ObjectStore,
    bucket: str,
    job_id: str,
    manifest: JobManifest,
    spec: JobSpec,
    symbol: str,
    live: ProductionManifest | None,
) -> Entry:
    m = manifest.metrics
    try:
        gate, passed = check_gate(job_id, m.final, live, spec.promotion), True
    except GateRefused as exc:
        gate, passed = str(exc), False
    summary = read_record(store, paths_of(bucket, job_id).summary, JobSummary)
    cost = summary.cost_usd if summary is not None and summary.launches else None
    return Entry(
        job_id=job_id,
        name=spec.job.name,
        symbol=symbol,
        metrics=m.final,
        train_rows=m.rows_seen_all_ranks,
        steps=m.steps,
        train_seconds=m.train_seconds,
        cost_usd=cost,
        passed=passed,
        gate=gate,
    )
