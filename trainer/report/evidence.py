"""A committed job's evidence for a report, read from its prefix and checked against its
manifest: every file read must have the size and sha256 the manifest lists."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.errors import UsageError, VerificationError
from trainer.job.state import paths_of, require_job, state_of
from trainer.job.summary import summary_of
from trainer.spec import parse_spec
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.records import (
    DatasetFingerprint,
    EvalRecord,
    FeatureImportance,
    JobManifest,
    JobSummary,
    StepRecord,
    parse_metrics_log,
    parse_record,
    read_record,
)


class NotCommitted(UsageError):
    """The job has no manifest: there is nothing verified to report on."""


@dataclass(frozen=True)
class Predictions:
    ts: np.ndarray
    """int64 epoch milliseconds."""
    label: np.ndarray
    pred: np.ndarray


@dataclass(frozen=True)
class Evidence:
    """What a report shows of one committed job."""

    job_id: str
    title: str
    """How plots and tables name it: the job id, or `production v3 (job-…)`."""
    uri: str
    manifest: JobManifest
    summary: JobSummary
    spec_text: str
    dataset: DatasetFingerprint | None
    steps: tuple[StepRecord, ...]
    """The training-step lines of `metrics.jsonl` (those of the run that committed)."""
    predictions: Predictions
    importance: FeatureImportance | None
    """None for a job committed before importance was recorded."""

    @property
    def evals(self) -> tuple[EvalRecord, ...]:
        return self.manifest.metrics.history


def load_evidence(store: ObjectStore, bucket: str, job_id: str, title: str = "") -> Evidence:
    """The job's evidence; UnknownJob for an id with nothing stored, NotCommitted for a job
    without a manifest, VerificationError for a file that does not match it."""
    paths = paths_of(bucket, job_id)
    manifest = read_record(store, paths.manifest, JobManifest)
    if manifest is None:
        files = require_job(store, paths)
        raise NotCommitted(
            f"job {job_id} is {state_of(files)}, not committed: a report needs the artifacts "
            f"a committed job leaves (see `quantlab-train status {job_id}`)"
        )
    read = _Reader(store, paths, manifest)
    spec_text = read.bytes(paths.JOBSPEC).decode("utf-8")
    summary = read_record(store, paths.summary, JobSummary)
    if summary is None or not summary.committed:
        summary = summary_of(parse_spec(spec_text, source=store.uri(paths.jobspec)), manifest)
    table = pq.read_table(pa.BufferReader(read.bytes(paths.VAL_PREDICTIONS)))
    dataset = read.optional(paths.DATASET)
    importance = read.optional(paths.IMPORTANCE)
    return Evidence(
        job_id=job_id,
        title=title or job_id,
        uri=store.uri(paths.dir),
        manifest=manifest,
        summary=summary,
        spec_text=spec_text,
        dataset=None
        if dataset is None
        else parse_record(DatasetFingerprint, dataset, paths.DATASET),
        steps=_steps(read.bytes(paths.METRICS_LOG), store.uri(paths.metrics_log)),
        predictions=Predictions(
            ts=table.column("ts").to_numpy().astype(np.int64),
            label=table.column("label").to_numpy().astype(np.float64),
            pred=table.column("prediction").to_numpy().astype(np.float64),
        ),
        importance=None
        if importance is None
        else parse_record(FeatureImportance, importance, paths.IMPORTANCE),
    )


class _Reader:
    """Reads files the manifest lists, each checked against its entry."""

    def __init__(self, store: ObjectStore, paths: JobPaths, manifest: JobManifest) -> None:
        self.store, self.paths = store, paths
        self.entries = {f.name: f for f in manifest.files}

    def optional(self, name: str) -> bytes | None:
        return self.bytes(name) if name in self.entries else None

    def bytes(self, name: str) -> bytes:
        loc = self.paths.file(name)
        entry = self.entries.get(name)
        if entry is None:
            raise VerificationError(f"{self.store.uri(loc)} is not listed in the job's manifest")
        data = self.store.get(loc)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != entry.size or digest != entry.sha256:
            raise VerificationError(
                f"{self.store.uri(loc)} does not match the manifest: size {len(data)} vs "
                f"{entry.size}, sha256 {digest[:12]}… vs {entry.sha256[:12]}…"
            )
        return data


def _steps(raw: bytes, where: str) -> tuple[StepRecord, ...]:
    return tuple(r for r in parse_metrics_log(raw, where) if isinstance(r, StepRecord))
