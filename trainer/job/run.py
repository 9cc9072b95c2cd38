"""The training job: JobSpec in; prepare, fit, write artifacts, commit; artifacts out.

`run_job` is the shell around the three steps: a committed job is not run again, a job that
commits returns its manifest, and a job that fails leaves a failure record and no manifest."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data.passes import SplitRows
from trainer.data.plan import DatasetPlan
from trainer.data.windows import Windows
from trainer.errors import JobBusy, JobFailed, TrainerError
from trainer.job.artifacts import (
    JobInfo,
    commit,
    read_manifest,
    write_artifacts,
    write_failure,
)
from trainer.job.counts import row_counts
from trainer.job.hold import Hold, hold_job
from trainer.job.identity import Resolved, check_committed, resolve
from trainer.job.prepare import Prepared, SharedData, prepare
from trainer.job.summary import record_commit
from trainer.model.code import StagedCode, stage
from trainer.model.entry import where
from trainer.model.export import FORMAT
from trainer.redact import RedactingFilter, Secrets, prints_to_log
from trainer.spec import JobSpec
from trainer.store.base import ObjectStore, store_failure
from trainer.store.layout import JobPaths, Layout
from trainer.store.records import (
    DatasetRef,
    EvalMetrics,
    EvalRecord,
    JobManifest,
    JobMetrics,
    ModelRef,
    RowCounts,
    utc_now,
)
from trainer.train.distributed import Ranks, all_sum, from_env, setup, teardown
from trainer.train.loop import FitResult, Prune, Validation, fit, predict
from trainer.train.losses import validation_scores
from trainer.train.report import RunLog

log = logging.getLogger("quantlab.job")

Listener = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class JobResult:
    job_id: str
    outcome: str
    """`succeeded`, `already_done`, `dry_run` or `worker` (a rank other than 0)."""
    artifacts: str
    """Where the artifacts are: the job's prefix in the store, or a local folder (dry run)."""
    metrics: JobMetrics | None = None
    manifest: JobManifest | None = None

    @property
    def final(self) -> EvalMetrics | None:
        return self.metrics.final if self.metrics is not None else None


class _ThisJob(logging.Filter):
    """Keeps the records of the thread that runs this job, and of threads no job runs on
    (the loader's): with several jobs in one process, each `train.log` has only its own."""

    _running: set[int] = set()  # noqa: RUF012 - shared on purpose: every job's thread
    _lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        with self._lock:
            self._running.add(self.thread)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread or record.thread not in self._running

    def close(self) -> None:
        with self._lock:
            self._running.discard(self.thread)


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
    code_from_store: bool = False,
    shared: SharedData | None = None,
    prune: Prune | None = None,
    leased: bool = False,
) -> JobResult:
    """Run the whole job. The spec is resolved against its dataset and its code first (the
    pre-flight, the code's hash), which fixes the job id. A job committed on the same data is
    not run again, one committed on other data is refused (DatasetChanged); a failed one
    leaves a failure record and no manifest. `listener(kind, record)` sees progress (the
    heartbeat uses it). The spec's `code` is packed from `code.path` here, or with
    `code_from_store` (the container) downloaded from the job's prefix, where the launcher
    put it.

    A sweep runs its trials through here too: `shared` gives the pre-flight and the data
    read for earlier trials with the same data section, and `prune` judges each
    evaluation (see `fit`).

    Before anything is written the run takes the job's lease (`leased`: the caller holds it
    already, as a container does): a run that another one holds the job from raises JobBusy
    having written nothing, and nothing is ever written into a committed job's prefix."""
    started = utc_now()
    resolved = _resolve(spec, store, dry_run, started, shared)
    spec, plan = resolved.spec, resolved.plan
    paths = Layout.of(spec.storage).job(spec.job_id)
    if not dry_run and (done := _committed(store, paths, plan)) is not None:
        return done
    if not dry_run:  # the lease and the commit are conditional writes: refuse before training
        store.require_conditional_writes(paths.bucket)
    take = not (dry_run or leased) and from_env().is_main  # other ranks share rank 0's lease
    with hold_job(store, paths, take) as hold:
        if take and (done := _committed(store, paths, plan)) is not None:
            hold.committed = True  # committed while this run waited: its lease stays
            return done
        own_dir = workdir is None
        workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{paths.job_id}-"))
        result = _run(
            spec,
            store,
            plan,
            paths,
            device,
            dry_run,
            workdir,
            listener,
            hold,
            started,
            shared,
            prune,
            code_from_store,
        )
        if own_dir and result.outcome == "succeeded":
            shutil.rmtree(workdir, ignore_errors=True)  # committed: every file is in the store
        return result


def _committed(store: ObjectStore, paths: JobPaths, plan: DatasetPlan) -> JobResult | None:
    """The result of a job committed on this data already; DatasetChanged on other data."""
    manifest = read_manifest(store, paths)
    if manifest is None:
        return None
    check_committed(store, paths, manifest, plan)
    log.info("job %s is already committed on this data; nothing to do", paths.job_id)
    return JobResult(paths.job_id, "already_done", store.uri(paths.dir), manifest.metrics, manifest)


def _run(
    spec: JobSpec,
    store: ObjectStore,
    plan: DatasetPlan,
    paths: JobPaths,
    device: str,
    dry_run: bool,
    workdir: Path,
    listener: Listener | None,
    hold: Hold,
    started: str,
    shared: SharedData | None,
    prune: Prune | None,
    code_from_store: bool,
) -> JobResult:
    """Prepare, fit, write the artifacts and commit them, holding the job's lease."""
    job_id = paths.job_id
    workdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(workdir / JobPaths.TRAIN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    secrets = Secrets()
    handler.addFilter(RedactingFilter(secrets))  # train.log is uploaded: no secret in it
    own = _ThisJob()
    handler.addFilter(own)  # jobs running side by side (a sweep) keep their own logs
    logging.getLogger("quantlab").addHandler(handler)
    ranks = from_env()
    scope = contextlib.ExitStack()  # the researcher's code: its prints, its import path
    code: StagedCode | None = None
    try:
        torch_device = setup(ranks, pick_device(device))
        log.info("job %s on %s%s", job_id, _describe(torch_device), " (dry run)" if dry_run else "")
        scope.enter_context(prints_to_log(logging.getLogger("quantlab.user"), secrets))
        fetch_from = store if code_from_store else None
        code = scope.enter_context(stage(spec.code, workdir, store=fetch_from, loc=paths.code))
        job = prepare(spec, store, plan, torch_device, ranks, dry_run, code=code, shared=shared)
        val = Validation(_on_device(job.val, torch_device), job.val.y.astype(np.float64))
        try:
            result = _fit(job, val, torch_device, ranks, workdir, listener, prune)
        finally:
            # wait for the reads in flight: a worker rank exits right after the last
            # collective, and a reading thread still inside the decoder aborts the process
            job.loader.close(wait=True)
        rows_all_ranks = all_sum(result.state.rows_seen, ranks, torch_device)
        counts = row_counts(job, rows_all_ranks, job.restored is not None, ranks, torch_device)
        if not ranks.is_main:
            return JobResult(job_id, "worker", str(workdir))
        pred = predict(job.model, val.x)
        metrics = _metrics(job, result, pred, rows_all_ranks, ranks, counts)
        write_artifacts(workdir, spec, job.plan, job.model, job.val, pred, metrics)
        if dry_run:
            log.info("dry run finished; artifacts kept locally in %s", workdir)
            return JobResult(job_id, "dry_run", str(workdir), metrics)
        info = JobInfo(
            started_at=started,
            ended_at=utc_now(),
            device=_describe(torch_device),
            dataset=DatasetRef(
                config_hash=plan.config_hash,
                featureset=plan.featureset,
                fingerprint=spec.data.fingerprint,
            ),
            model=ModelRef(format=FORMAT, features=job.plan.features, label=job.plan.label),
            metrics=metrics,
        )
        handler.flush()
        files = sorted(p for p in workdir.iterdir() if p.is_file())
        hold.check()  # the lease went to another run: its artifacts, not these, may land
        committed = commit(store, paths, files, info)
        hold.committed = True
        log.info("committed %d artifacts to %s", len(files), committed.uri)
        record_commit(store, paths, spec, committed.manifest)
        _drop_checkpoints(store, paths)
        return JobResult(job_id, "succeeded", committed.uri, metrics, committed.manifest)
    except Exception as exc:
        failure = _in_model_code(exc, code) or store_failure(exc, str(workdir)) or exc
        reason = (
            str(failure)
            if isinstance(failure, TrainerError)
            else f"{type(failure).__name__}: {exc}"
        )
        log.error("job %s failed: %s", job_id, reason)
        log.info("the working folder is kept at %s", workdir)
        if not dry_run and ranks.is_main and hold.ours and not isinstance(exc, JobBusy):
            handler.flush()
            _record_failure(store, paths, reason, exc, workdir, started)
        if failure is not exc:
            raise failure from exc
        raise
    finally:
        scope.close()
        logging.getLogger("quantlab").removeHandler(handler)
        handler.close()
        own.close()
        teardown(ranks)


def _resolve(
    spec: JobSpec, store: ObjectStore, dry_run: bool, started: str, shared: SharedData | None
) -> Resolved:
    """The spec resolved against its dataset (the pre-flight `shared` already made of this
    data section, if any). A spec that names its job (the container's) records why it cannot
    be; a derived id has no prefix before the data is known."""
    try:
        if shared is not None:
            return shared.resolve(spec)
        return resolve(spec, store)
    except TrainerError as exc:
        log.error("job %s failed: %s", spec.job_id if spec.resolved else "(unresolved)", exc)
        if spec.resolved and not dry_run and from_env().is_main:
            paths = Layout.of(spec.storage).job(spec.job_id)
            write_failure(store, paths, str(exc), type(exc).__name__, "error", started_at=started)
        raise


def _on_device(val: SplitRows, device: torch.device) -> Windows:
    """The validation samples on the training device: their rows, and where windows end."""
    ends = None if val.ends is None else torch.from_numpy(val.ends)
    return Windows(torch.from_numpy(val.x), ends, val.window).to(device)


def _in_model_code(exc: Exception, code: StagedCode | None) -> JobFailed | None:
    """An exception the researcher's code raised while training, as the job failing at its
    `file:line` (not a bug of the runner)."""
    place = where(exc, code) if code is not None and not isinstance(exc, TrainerError) else None
    if place is None:
        return None
    return JobFailed(f"model code failed at {place}: {type(exc).__name__}: {exc}")


def _fit(
    job: Prepared,
    val: Validation,
    device: torch.device,
    ranks: Ranks,
    workdir: Path,
    listener: Listener | None,
    prune: Prune | None,
) -> FitResult:
    """The second step: the loop, with the model wrapped for DDP when there are ranks."""
    model: torch.nn.Module = job.model
    if ranks.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    progress = RunLog(workdir / JobPaths.METRICS_LOG, listener)
    try:
        return fit(
            model,
            job.loader,
            val,
            job.train,
            device,
            job.max_steps,
            progress,
            ranks=ranks,
            resume=job.restored,
            checkpoint=job.checkpointer if ranks.is_main else None,
            loss_fn=job.loss,
            prune=prune,
        )
    finally:
        progress.close()


def _metrics(
    job: Prepared,
    result: FitResult,
    pred: np.ndarray,
    rows_all_ranks: int,
    ranks: Ranks,
    counts: RowCounts,
) -> JobMetrics:
    s = result.state
    return JobMetrics(
        final=EvalMetrics.model_validate(
            validation_scores(pred, job.val.y, job.loss, job.train.batch_size)
        ),
        best=EvalRecord.model_validate(s.best) if s.best else None,
        best_step=s.best_step,
        steps=s.step,
        rows_seen=s.rows_seen,
        stopped_early=result.stopped_early,
        train_seconds=round(result.wall_s, 3),
        rows_dropped_non_finite=job.loader.stats.dropped_non_finite,
        rows_dropped_short_window=job.loader.stats.short_history,
        history=tuple(EvalRecord.model_validate(h) for h in s.history),
        rows_seen_all_ranks=rows_all_ranks,
        world_size=ranks.world_size,
        resumed_from_step=job.restored.step if job.restored else None,
        checkpoints=tuple(job.checkpointer.saved if job.checkpointer else ()),
        max_steps=job.max_steps,
        pruned_at_step=s.step if result.pruned else None,
        rows=counts,
    )


def _record_failure(
    store: ObjectStore,
    paths: JobPaths,
    reason: str,
    exc: BaseException,
    workdir: Path,
    started: str,
) -> None:
    if store.exists(paths.manifest):  # another run committed the job: its prefix stands
        log.error("job %s is committed by another run; this run records nothing", paths.job_id)
        return
    log_path = workdir / JobPaths.TRAIN_LOG
    if log_path.exists():
        with contextlib.suppress(TrainerError):
            store.upload(paths.file(JobPaths.TRAIN_LOG), log_path)
    uri = write_failure(store, paths, reason, type(exc).__name__, "error", started_at=started)
    if uri:
        log.error("failure recorded at %s", uri)


def _drop_checkpoints(store: ObjectStore, paths: JobPaths) -> None:
    """A committed job never resumes: its checkpoints only cost storage now."""
    try:
        for obj in store.list(paths.checkpoints):
            store.delete(obj.loc)
    except TrainerError as exc:
        log.warning("could not delete the checkpoints of job %s: %s", paths.job_id, exc)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return "cpu"
