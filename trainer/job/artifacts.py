"""Job artifacts: the files a trained model leaves, the manifest that commits them,
verification, and the failure record of a job that did not commit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainer import __version__
from trainer.data.passes import SplitRows
from trainer.data.plan import DatasetPlan
from trainer.errors import (
    JobFailed,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    VerificationError,
)
from trainer.model.export import FORMAT, export_model, load_model
from trainer.spec import JobSpec, dump_spec
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.records import (
    Cause,
    DatasetRef,
    FailureRecord,
    FileEntry,
    JobManifest,
    JobMetrics,
    ModelMeta,
    ModelRef,
    read_record,
    utc_now,
    write_record,
)
from trainer.train.importance import permutation_importance

SAMPLE_ROWS = 2_048
CHECK_ROWS = 4_096


class AlreadyCommitted(PreconditionFailed):
    """The job id already has a manifest; it is never overwritten."""


@dataclass(frozen=True)
class JobInfo:
    """What the manifest says about the job besides its files."""

    started_at: str
    ended_at: str
    device: str
    dataset: DatasetRef
    model: ModelRef
    metrics: JobMetrics


@dataclass(frozen=True)
class Committed:
    manifest: JobManifest
    uri: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_artifacts(
    workdir: Path,
    spec: JobSpec,
    plan: DatasetPlan,
    model: torch.nn.Module,
    val: SplitRows,
    pred: np.ndarray,
    metrics: JobMetrics,
) -> None:
    """Everything but the log and the manifest into `workdir`; checks that the exported
    model reproduces the trained one's predictions."""
    meta = ModelMeta(
        job_id=spec.job_id,
        features=plan.features,
        label=plan.label,
        featureset=plan.featureset,
        config_hash=plan.config_hash,
        label_horizon_sec=plan.label_horizon_sec,
        format=FORMAT,
        window=val.window,
        model=spec.model.type,
        loss=spec.train.loss,
        code_sha256=spec.code.sha256 if spec.code else None,
    )
    export_model(model, len(plan.features), meta, workdir / JobPaths.MODEL)
    exported, _ = load_model(workdir / JobPaths.MODEL)
    with torch.no_grad():
        first = torch.from_numpy(val.inputs(slice(0, CHECK_ROWS)))
        again = exported(first).numpy().astype(np.float64)
    if not np.allclose(again, pred[:CHECK_ROWS], atol=1e-4, rtol=1e-4):
        raise JobFailed("the exported model.bin does not reproduce the trained model's output")
    (workdir / JobPaths.JOBSPEC).write_text(dump_spec(spec), encoding="utf-8")
    (workdir / JobPaths.METRICS).write_bytes(metrics.to_json())
    (workdir / JobPaths.DATASET).write_bytes(plan.fingerprint().to_json())
    table = pa.table(
        {"ts": val.ts, "label": val.y.astype(np.float32), "prediction": pred.astype(np.float32)}
    )
    pq.write_table(table, workdir / JobPaths.VAL_PREDICTIONS, compression="zstd")
    # A fixed sample of validation rows with their raw features: promotion re-runs model.bin
    # on it without reading the dataset again.
    pick = np.sort(np.random.default_rng(0).permutation(len(val.y))[:SAMPLE_ROWS])
    inputs = val.inputs(pick)
    pq.write_table(
        sample_table(inputs, val, pick, pred[pick], plan.features),
        workdir / JobPaths.VAL_SAMPLE,
        compression="zstd",
    )

    def predict_rows(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return exported(torch.from_numpy(rows)).numpy().astype(np.float64)

    importance = permutation_importance(
        predict_rows, inputs, val.y[pick].astype(np.float64), plan.features
    )
    (workdir / JobPaths.IMPORTANCE).write_bytes(importance.to_json())


def sample_table(
    inputs: np.ndarray,
    val: SplitRows,
    pick: np.ndarray,
    pred: np.ndarray,
    features: tuple[str, ...],
) -> pa.Table:
    """`val_sample.parquet`: the chosen samples' raw rows, one column per feature. With a
    window above 1, each sample is its `window` rows in time order, as a live engine holds
    them; its label and prediction sit on its last (labelled) row, null on the others."""
    n, window = len(pick), val.window
    rows = inputs.reshape(n * window, len(features))
    last = np.arange(n * window) % window == window - 1
    if val.ends is None or val.row_ts is None:
        row_ts = val.ts[pick]
    else:
        row_ts = val.row_ts[(val.ends[pick][:, None] + np.arange(1 - window, 1)).reshape(-1)]

    def on_last(values: np.ndarray) -> pa.Array:
        spread = np.zeros(n * window, np.float32)
        spread[last] = values.astype(np.float32)
        return pa.array(spread, mask=~last)

    table = {name: rows[:, j] for j, name in enumerate(features)}
    table |= {
        "__ts": row_ts,
        "__sample": np.repeat(np.arange(n, dtype=np.int32), window),
        "__label": on_last(val.y[pick]),
        "__prediction": on_last(pred),
    }
    return pa.table(table)


def commit(store: ObjectStore, paths: JobPaths, files: list[Path], info: JobInfo) -> Committed:
    """Upload `files` under `ml-artifacts/<job_id>/`, then write the manifest last and only if
    absent: its presence is what "complete" means."""
    if store.exists(paths.manifest):
        raise AlreadyCommitted(
            f"{store.uri(paths.manifest)} exists: job {paths.job_id} is committed"
        )
    listed = []
    for path in files:
        store.upload(paths.file(path.name), path)
        listed.append(FileEntry(name=path.name, size=path.stat().st_size, sha256=sha256_file(path)))
    manifest = JobManifest(
        job_id=paths.job_id,
        started_at=info.started_at,
        ended_at=info.ended_at,
        committed_at=utc_now(),
        code_version=__version__,
        device=info.device,
        dataset=info.dataset,
        model=info.model,
        metrics=info.metrics,
        files=tuple(listed),
    )
    if store.exists(paths.failure):  # an earlier attempt's: no failure beside a manifest
        store.delete(paths.failure)
    try:
        write_record(store, paths.manifest, manifest, if_absent=True)
    except PreconditionFailed:
        raise AlreadyCommitted(
            f"{store.uri(paths.manifest)} appeared while committing: another run of job "
            f"{paths.job_id} won; its artifacts stand"
        ) from None
    return Committed(manifest, store.uri(paths.dir))


def read_manifest(store: ObjectStore, paths: JobPaths) -> JobManifest | None:
    return read_record(store, paths.manifest, JobManifest)


def verify(store: ObjectStore, paths: JobPaths, workdir: Path) -> JobManifest:
    """Download every listed file and check its size and sha256; returns the manifest."""
    manifest = read_manifest(store, paths)
    if manifest is None:
        raise VerificationError(
            f"{store.uri(paths.manifest)} does not exist: the job is not committed"
        )
    for entry in manifest.files:
        loc = paths.file(entry.name)
        local = workdir / entry.name
        try:
            store.download(loc, local)
        except ObjectNotFound:
            raise VerificationError(
                f"{store.uri(loc)} is listed in the manifest but missing"
            ) from None
        size, digest = local.stat().st_size, sha256_file(local)
        if size != entry.size or digest != entry.sha256:
            raise VerificationError(
                f"{store.uri(loc)} does not match the manifest: size {size} vs {entry.size}, "
                f"sha256 {digest[:12]}… vs {entry.sha256[:12]}…"
            )
    return manifest


def write_failure(
    store: ObjectStore,
    paths: JobPaths,
    reason: str,
    error: str,
    cause: Cause = "error",
    started_at: str | None = None,
    instances: tuple[int, ...] = (),
) -> str | None:
    """Record why a job failed. Best effort: a failure to record is logged, not raised over
    the original error. Returns the record's URI when written."""
    if store.exists(paths.manifest):
        return None  # a committed job's prefix is never written again: its artifacts stand
    record = FailureRecord(
        job_id=paths.job_id,
        reason=reason,
        cause=cause,
        error=error,
        failed_at=utc_now(),
        code_version=__version__,
        started_at=started_at,
        instances=instances,
    )
    try:
        write_record(store, paths.failure, record)
    except StorageError:
        return None
    return store.uri(paths.failure)


def read_failure(store: ObjectStore, paths: JobPaths) -> FailureRecord | None:
    return read_record(store, paths.failure, FailureRecord)
