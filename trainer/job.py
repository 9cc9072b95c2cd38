"""The training job: JobSpec in; pre-flight, stream, train, export, commit; artifacts out."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainer.artifacts import commit, read_manifest, utc_now, write_failure
from trainer.data.loader import (
    BlockCache,
    StreamingLoader,
    compute_feature_stats,
    read_split_arrays,
)
from trainer.data.plan import DatasetPlan, preflight
from trainer.errors import DataError, JobFailed, TrainerError
from trainer.export import FORMAT, export_model, load_model
from trainer.layout import Layout
from trainer.model import build_model
from trainer.spec import JobSpec, dump_spec
from trainer.storage.base import ObjectStore
from trainer.train.checkpoint import Checkpointer
from trainer.train.distributed import Ranks, all_sum, from_env, setup, teardown
from trainer.train.loop import FitResult, Validation, fit, predict
from trainer.train.report import RunReporter

log = logging.getLogger("quantlab.job")

DRY_RUN_ROWS = 4_096
DRY_RUN_STEPS = 5
CACHE_BYTES = 2 << 30
SAMPLE_ROWS = 2_048
SAMPLE_ROWS = 2_048
Listener = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class JobResult:
    job_id: str
    outcome: str
    """`succeeded`, `already_done` or `dry_run`."""
    artifacts: str
    """Where the artifacts are: the job's prefix in the store, or a local folder (dry run)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise JobFailed("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def run_job(
    spec: JobSpec,
    store: ObjectStore,
    *,
    device: str = "auto",
    dry_run: bool = False,
    workdir: Path | None = None,
    listener: Listener | None = None,
) -> JobResult:
    """Run the whole job. A committed job is not run again; a failed one leaves a failure
    record and no manifest. `listener(kind, record)` sees progress (the heartbeat uses it)."""
    layout, job_id = Layout(spec.storage), spec.job_id
    if not dry_run and (manifest := read_manifest(store, layout, job_id)) is not None:
        log.info("job %s is already committed; nothing to do", job_id)
        return JobResult(
            job_id,
            "already_done",
            store.uri(layout.job_dir(job_id)),
            manifest.get("metrics", {}),
            manifest,
        )
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{job_id}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(workdir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger("quantlab").addHandler(handler)
    started = utc_now()
    ranks = from_env()
    try:
        torch_device = setup(ranks, pick_device(device))
        info = _train(spec, store, layout, torch_device, dry_run, workdir, listener, ranks)
        info |= {"started_at": started, "ended_at": utc_now()}
        if not ranks.is_main:
            return JobResult(job_id, "worker", str(workdir))
        if dry_run:
            log.info("dry run finished; artifacts kept locally in %s", workdir)
            return JobResult(job_id, "dry_run", str(workdir), info["metrics"])
        handler.flush()
        files = sorted(p for p in workdir.iterdir() if p.is_file())
        committed = commit(store, layout, job_id, files, info)
        log.info("committed %d artifacts to %s", len(files), committed.uri)
        _drop_checkpoints(store, layout, job_id)
        return JobResult(job_id, "succeeded", committed.uri, info["metrics"], committed.manifest)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, TrainerError) else f"{type(exc).__name__}: {exc}"
        log.error("job %s failed: %s", job_id, reason)
        if not dry_run and ranks.is_main:
            handler.flush()
            _record_failure(store, layout, job_id, reason, exc, workdir, started)
        raise
    finally:
        logging.getLogger("quantlab").removeHandler(handler)
        handler.close()
        teardown(ranks)


def _train(
    spec: JobSpec,
    store: ObjectStore,
    layout: Layout,
    device: torch.device,
    dry_run: bool,
    workdir: Path,
    listener: Listener | None,
    ranks: Ranks,
) -> dict[str, Any]:
    train = spec.train
    if dry_run:
        train = train.model_copy(update={"max_steps": DRY_RUN_STEPS, "eval_every_steps": 10**9})
    limit = DRY_RUN_ROWS if dry_run else None
    log.info("job %s on %s%s", spec.job_id, _describe(device), " (dry run)" if dry_run else "")

    plan = preflight(spec.data, store, layout)
    log.info(
        "dataset: %d partitions, %d rows, %.1f MB, %d features",
        len(plan.partitions),
        plan.rows,
        plan.bytes / 1e6,
        len(plan.features),
    )
    cache = BlockCache(CACHE_BYTES)
    mean, std, n_train = compute_feature_stats(
        plan, store, cache=cache, non_finite=spec.data.non_finite, max_rows=limit
    )
    x_val, y_val, ts_val = read_split_arrays(
        plan, store, "val", non_finite=spec.data.non_finite, max_rows=limit
    )
    if n_train == 0 or len(y_val) == 0:
        raise DataError(
            "nothing to train on",
            [
                f"{n_train} training rows and {len(y_val)} "
                "validation rows after the split, the purge and non-finite filtering"
            ],
        )
    log.info("rows: train %d, validation %d", n_train, len(y_val))

    model: torch.nn.Module = build_model(spec.model, len(plan.features), mean, std, train.seed)
    model = model.to(device)
    loader = StreamingLoader(
        plan,
        store,
        split="train",
        batch_size=train.batch_size,
        seed=train.seed,
        rank=ranks.rank,
        world_size=ranks.world_size,
        device=device,
        shuffle_buffer_row_groups=train.shuffle_buffer_row_groups,
        non_finite=spec.data.non_finite,
        max_rows=limit,
        cache=cache,
    )
    checkpointer = None
    restored = None
    if not dry_run:
        checkpointer = Checkpointer(
            store,
            layout,
            spec.job_id,
            train.checkpoint,
            loader,
            epoch_boundaries_only=ranks.distributed,
        )
        restored = checkpointer.restore(model)
    if ranks.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    steps_per_epoch = math.ceil(n_train / (train.batch_size * ranks.world_size))
    total = steps_per_epoch * train.epochs if train.epochs else (train.max_steps or 1)
    val = Validation(torch.from_numpy(x_val).to(device), y_val.astype(np.float64))
    reporter = RunReporter(workdir / "metrics.jsonl", listener)
    try:
        result = fit(
            model,
            loader,
            val,
            train,
            device,
            total,
            reporter,
            state=restored.state if restored else None,
            optimizer_state=restored.optimizer if restored else None,
            checkpoint=checkpointer if ranks.is_main else None,
            is_main=ranks.is_main,
            distributed=ranks.distributed,
        )
    finally:
        reporter.close()
    rows_all_ranks = all_sum(result.state.rows_seen, ranks, device)
    if not ranks.is_main:
        return {"metrics": {}, "worker": True}
    model = getattr(model, "module", model)

    pred = predict(model, val.x)
    metrics = _metrics(result, pred, y_val, loader)
    metrics |= {
        "rows_seen_all_ranks": rows_all_ranks,
        "world_size": ranks.world_size,
        "resumed_from_step": restored.step if restored else None,
        "checkpoints": checkpointer.saved if checkpointer else [],
    }
    _write_artifacts(spec, plan, model, workdir, metrics, pred, x_val, y_val, ts_val)
    return {
        "metrics": metrics,
        "dataset": {"config_hash": plan.config_hash, "featureset": plan.featureset},
        "model": {"format": FORMAT, "features": list(plan.features), "label": plan.label},
        "device": _describe(device),
    }


def _metrics(
    result: FitResult, pred: np.ndarray, y_val: np.ndarray, loader: StreamingLoader
) -> dict[str, Any]:
    from trainer.train.metrics import evaluate_predictions

    s = result.state
    return {
        "final": evaluate_predictions(pred, y_val),
        "best": s.best,
        "best_step": s.best_step,
        "steps": s.step,
        "rows_seen": s.rows_seen,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.wall_s, 3),
        "rows_dropped_non_finite": loader.stats.dropped_non_finite,
        "history": s.history,
    }


def _write_artifacts(
    spec: JobSpec,
    plan: DatasetPlan,
    model: torch.nn.Module,
    workdir: Path,
    metrics: dict[str, Any],
    pred: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    ts_val: np.ndarray,
) -> None:
    """Everything but the log and the manifest; checks the export reproduces the model."""
    meta = {
        "job_id": spec.job_id,
        "features": list(plan.features),
        "label": plan.label,
        "featureset": plan.featureset,
        "config_hash": plan.config_hash,
        "label_horizon_sec": plan.label_horizon_sec,
    }
    export_model(model, len(plan.features), meta, workdir / "model.bin")
    exported, _ = load_model(workdir / "model.bin")
    with torch.no_grad():
        again = exported(torch.from_numpy(x_val[:4096])).numpy().astype(np.float64)
    if not np.allclose(again, pred[:4096], atol=1e-4, rtol=1e-4):
        raise JobFailed("the exported model.bin does not reproduce the trained model's output")
    (workdir / "jobspec.yaml").write_text(dump_spec(spec), encoding="utf-8")
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (workdir / "dataset.json").write_text(json.dumps(plan.fingerprint(), indent=2), "utf-8")
    table = pa.table(
        {"ts": ts_val, "label": y_val.astype(np.float32), "prediction": pred.astype(np.float32)}
    )
    pq.write_table(table, workdir / "val_predictions.parquet", compression="zstd")
    # A fixed sample of validation rows with their raw features: promotion re-runs model.bin
    # on it without reading the dataset again.
    pick = np.sort(np.random.default_rng(0).permutation(len(y_val))[:SAMPLE_ROWS])
    sample = {name: x_val[pick, j] for j, name in enumerate(plan.features)}
    sample |= {
        "__ts": ts_val[pick],
        "__label": y_val[pick].astype(np.float32),
        "__prediction": pred[pick].astype(np.float32),
    }
    pq.write_table(pa.table(sample), workdir / "val_sample.parquet", compression="zstd")


def _record_failure(
    store: ObjectStore,
    layout: Layout,
    job_id: str,
    reason: str,
    exc: BaseException,
    workdir: Path,
    started: str,
) -> None:
    log_path = workdir / "train.log"
    if log_path.exists():
        with contextlib.suppress(TrainerError):
            store.upload(layout.job_file(job_id, "train.log"), log_path)
    uri = write_failure(store, layout, job_id, reason, type(exc).__name__, {"started_at": started})
    if uri:
        log.error("failure recorded at %s", uri)


def _drop_checkpoints(store: ObjectStore, layout: Layout, job_id: str) -> None:
    """A committed job never resumes: its checkpoints only cost storage now."""
    try:
        for obj in store.list(layout.job_file(job_id, "checkpoints/")):
            store.delete(obj.loc)
    except TrainerError as exc:
        log.warning("could not delete the checkpoints of job %s: %s", job_id, exc)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return "cpu"
