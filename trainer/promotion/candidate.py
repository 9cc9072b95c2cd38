"""A promotion candidate: a committed job whose artifacts verify against its manifest and whose
`model.bin` reproduces the predictions recorded on its validation sample."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from trainer.errors import SpecError, VerificationError
from trainer.job.artifacts import verify
from trainer.model.export import load_model
from trainer.spec import parse_spec
from trainer.spec.sections import PromotionSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout
from trainer.store.records import EvalMetrics, JobMetrics, ModelMeta, parse_record
from trainer.train.metrics import pearson

TOLERANCE = 1e-4
# torch.export.load keeps its deserializer in a global: two loads at once in one process fail.
LOAD_LOCK = threading.Lock()


class CandidateInvalid(VerificationError):
    """The job's artifacts are not a model that can go live; the message names the file."""


@dataclass(frozen=True)
class PromotionCandidate:
    """A verified job model, ready to publish."""

    job_id: str
    symbols: tuple[str, ...]
    data: bytes
    metrics: EvalMetrics
    model_meta: ModelMeta
    sample_ic: float
    sample_rows: int
    gate: PromotionSpec
    """The job's own `promotion` section, the gate used when the caller gives none."""


def load_candidate(
    store: ObjectStore, layout: Layout, job_id: str, workdir: Path
) -> PromotionCandidate:
    """Verify the job's artifacts and that its model reproduces the validation sample."""
    paths = layout.job(job_id)
    where = workdir / f"candidate-{job_id}"
    where.mkdir(parents=True, exist_ok=True)
    try:
        manifest = verify(store, paths, where)
    except VerificationError as exc:
        raise CandidateInvalid(f"job {job_id} cannot be promoted: {exc}") from None
    names = {entry.name for entry in manifest.files}
    for name in (paths.MODEL, paths.METRICS, paths.JOBSPEC, paths.VAL_SAMPLE):
        if name not in names:
            uri = store.uri(paths.file(name))
            raise CandidateInvalid(f"{uri} is not in the job's manifest; the job cannot go live")
    model_uri, sample_uri = store.uri(paths.model), store.uri(paths.val_sample)
    model_meta, ic, rows = check_sample(
        where / paths.MODEL, where / paths.VAL_SAMPLE, model_uri, sample_uri
    )
    if model_meta.job_id != job_id:
        raise CandidateInvalid(f"{model_uri} says it was trained by {model_meta.job_id!r}")
    metrics_uri = store.uri(paths.metrics)
    try:
        metrics = parse_record(JobMetrics, (where / paths.METRICS).read_bytes(), metrics_uri)
    except VerificationError as exc:
        raise CandidateInvalid(f"{exc}: it has no `final` validation metrics") from None
    symbols, gate = _read_jobspec(where / paths.JOBSPEC, store.uri(paths.jobspec))
    data = (where / paths.MODEL).read_bytes()
    return PromotionCandidate(job_id, symbols, data, metrics.final, model_meta, ic, rows, gate)


def check_sample(
    model_path: Path, sample_path: Path, model_uri: str, sample_uri: str
) -> tuple[ModelMeta, float, int]:
    """Run the model on the sample's features, in the order its metadata lists them; it must
    reproduce `__prediction`. Returns the model metadata, the sample IC and its sample count."""
    try:
        with LOAD_LOCK:
            module, meta = load_model(model_path)
    except Exception as exc:  # a damaged archive fails in many ways inside torch
        raise CandidateInvalid(f"{model_uri} does not load: {type(exc).__name__}: {exc}") from None
    table = pq.read_table(sample_path)
    features = list(meta.features)
    missing = [c for c in (*features, "__label", "__prediction") if c not in table.column_names]
    if not features or missing or table.num_rows == 0:
        raise CandidateInvalid(
            f"{sample_uri} cannot check {model_uri}: {table.num_rows} rows, "
            f"missing columns {missing or 'none'}, model features {features or 'none'}"
        )
    window = meta.window
    if table.num_rows % window:
        raise CandidateInvalid(
            f"{sample_uri} holds {table.num_rows} rows, not whole windows of {window} for "
            f"{model_uri}"
        )
    columns = [table[c].to_numpy(zero_copy_only=False).astype(np.float32) for c in features]
    rows = np.ascontiguousarray(np.column_stack(columns))
    # one sample per row, or the sample's `window` rows in time order, labelled on the last
    x = torch.from_numpy(rows if window == 1 else rows.reshape(-1, window, len(features)))
    with torch.no_grad():
        pred = module(x).numpy().astype(np.float64)
    recorded = table["__prediction"].to_numpy(zero_copy_only=False)[window - 1 :: window]
    recorded = recorded.astype(np.float64)
    if pred.shape != recorded.shape or not np.allclose(
        pred, recorded, atol=TOLERANCE, rtol=TOLERANCE, equal_nan=True
    ):
        worst = float(np.nanmax(np.abs(pred - recorded))) if pred.shape == recorded.shape else -1
        raise CandidateInvalid(
            f"{model_uri} does not reproduce the predictions recorded in {sample_uri}: largest "
            f"difference {worst:.3g} over {table.num_rows} rows (tolerance {TOLERANCE})"
        )
    label = table["__label"].to_numpy(zero_copy_only=False)[window - 1 :: window]
    label = label.astype(np.float64)
    ok = np.isfinite(pred) & np.isfinite(label)
    return meta, pearson(pred[ok], label[ok]), len(recorded)


def _read_jobspec(path: Path, uri: str) -> tuple[tuple[str, ...], PromotionSpec]:
    """The symbols the job trained on and its `promotion` rule, from the spec it ran."""
    try:
        spec = parse_spec(path.read_text("utf-8"), source=uri)
    except (SpecError, UnicodeDecodeError) as exc:
        raise CandidateInvalid(f"{uri} is not a readable JobSpec: {exc}") from None
    return spec.data.symbols, spec.promotion
