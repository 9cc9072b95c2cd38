"""`run_sweep`: a sweep's trials as ordinary jobs in this process, one after another or
several at once, the data read once per data section, losers pruned at evaluation points.

The same function runs a sweep on this CPU (`sweep --local`) and on a rented GPU (the
container, given a sweep). It continues whatever `sweep.json` already holds: committed
trials are not run again, an interrupted one runs again under its job id and so resumes
from its checkpoint. A trial that fails is recorded as failed and the sweep goes on; a stop
(Ctrl-C, a limit, the instance going) ends the sweep with its trials still `running`."""

from __future__ import annotations

import logging
import math
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.errors import ProblemsError, TrainerError
from trainer.job.run import JobResult, Listener, pick_device, run_job
from trainer.spec.sweep import SweepSpec
from trainer.store.base import ObjectStore
from trainer.store.records import JobMetrics, SweepRecord, TrialState
from trainer.sweep.book import SweepBook, keep_spec, read_sweep, sweep_paths
from trainer.sweep.search import Ask, Search
from trainer.sweep.shared import SharedSections

log = logging.getLogger("quantlab.sweep")

MIN_FREE_GPU_BYTES = 1 << 30
"""A trial starts beside running ones only while the GPU has this much memory free."""

OnChange = Callable[[SweepRecord], None]


@dataclass(frozen=True)
class SweepResult:
    sweep_id: str
    outcome: str
    """`succeeded` (committed now) or `already_done` (committed before)."""
    record: SweepRecord
    uri: str
    """The sweep's `sweep.json`."""


def resolve_sweep(sweep: SweepSpec, shared: SharedSections) -> SweepSpec:
    """The sweep with its base resolved against the base's data (the pre-flight), which
    fixes a derived sweep id."""
    base = shared.resolve(sweep.base).spec
    return sweep.model_copy(update={"base": base})


def run_sweep(
    sweep: SweepSpec,
    store: ObjectStore,
    *,
    device: str = "auto",
    workdir: Path | None = None,
    listener: Listener | None = None,
    on_change: OnChange | None = None,
    concurrency: int | None = None,
) -> SweepResult:
    """Run (or continue) the sweep until every trial is accounted for, then commit
    `sweep.json`. `listener` sees every trial's progress, `on_change` the record each time a
    trial starts or ends. `concurrency` defaults to the sweep's `trials_per_instance`."""
    shared = SharedSections(store)
    try:
        sweep = resolve_sweep(sweep, shared)
        paths = sweep_paths(sweep)
        record = read_sweep(store, paths)
        if record is not None and record.state == "committed":
            log.info("sweep %s is already committed; nothing to do", sweep.sweep_id)
            return SweepResult(sweep.sweep_id, "already_done", record, store.uri(paths.sweep))
        keep_spec(sweep, store)
        book = SweepBook(sweep, store, record)
        runner = _Runner(sweep, store, book, Search(sweep, record), shared, device, workdir)
        runner.listener, runner.on_change = listener, on_change
        runner.run(concurrency or sweep.trials_per_instance)
        final = book.commit()
        if on_change is not None:
            on_change(final)
        log.info(
            "sweep %s committed: %s; best trial %s; %d steps saved by pruning",
            sweep.sweep_id,
            ", ".join(f"{n} {s}" for s, n in sorted(final.counts().items())),
            final.best if final.best is not None else "none",
            final.steps_saved,
        )
        return SweepResult(sweep.sweep_id, "succeeded", final, store.uri(paths.sweep))
    finally:
        shared.close()


class _Runner:
    def __init__(
        self,
        sweep: SweepSpec,
        store: ObjectStore,
        book: SweepBook,
        search: Search,
        shared: SharedSections,
        device: str,
        workdir: Path | None,
    ) -> None:
        self.sweep, self.store, self.book, self.search = sweep, store, book, search
        self.shared, self.device = shared, device
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{sweep.sweep_id}-"))
        self.listener: Listener | None = None
        self.on_change: OnChange | None = None
        self.stopping = threading.Event()
        self._reads_counted = 0
        self._reads_lock = threading.Lock()

    def run(self, concurrency: int) -> None:
        left = self.sweep.n_trials - self.book.settled
        log.info(
            "sweep %s: %d of %d trials to run, %d at a time, sampler %s, pruning %s",
            self.sweep.sweep_id,
            left,
            self.sweep.n_trials,
            concurrency,
            self.sweep.sampler,
            self.sweep.pruning.rule,
        )
        if concurrency == 1:  # in this thread: a stop interrupts the trial where it is
            for _ in range(left):
                self.trial(self.search.ask())
            return
        running: set[Future[None]] = set()
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="trial") as pool:
            try:
                while left or running:
                    while left and len(running) < concurrency and self._room(len(running)):
                        running.add(pool.submit(self.trial, self.search.ask()))
                        left -= 1
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
            except BaseException:
                self.stopping.set()  # the others stop at their next evaluation
                raise

    def _room(self, running: int) -> bool:
        device = pick_device(self.device)
        if running == 0 or device.type != "cuda":
            return True
        free, _total = torch.cuda.mem_get_info(device)
        return free >= MIN_FREE_GPU_BYTES

    def trial(self, ask: Ask) -> None:
        spec = self.sweep.trial_spec(ask.number, ask.params)
        metric = self.sweep.objective.metric
        try:
            job_id = self.shared.resolve(spec).job_id
        except TrainerError as exc:
            self._failed(ask, f"trial-{ask.number}", exc)
            return
        self.book.started(ask.number, job_id, ask.params)
        self._changed()
        log.info("trial %d: job %s, %s", ask.number, job_id, _params(ask.params))

        def prune(record: dict[str, float]) -> bool:
            if self.stopping.is_set():
                raise KeyboardInterrupt  # the sweep is stopping: leave the trial resumable
            step, value = int(record["step"]), float(record[metric])
            self.book.evaluated(ask.number, step, value)
            if self.sweep.pruning.rule == "off":
                return False
            return self.search.report(ask, step, value)

        try:
            result = run_job(
                spec,
                self.store,
                device=self.device,
                workdir=self.workdir / f"trial-{ask.number}",
                listener=self.listener,
                shared=self.shared,
                prune=prune,
            )
        except Exception as exc:  # a trial's failure is the trial's, the sweep goes on
            self._failed(ask, job_id, exc)
            return
        self._ended(ask, result)

    def _count_reads(self) -> None:
        """Data sections read since the last trial ended, into the record it writes."""
        with self._reads_lock:
            fresh, self._reads_counted = self.shared.reads - self._reads_counted, self.shared.reads
        if fresh:
            self.book.read_data(fresh)

    def _ended(self, ask: Ask, result: JobResult) -> None:
        self._count_reads()
        metrics = result.metrics
        if metrics is None:  # pragma: no cover - a committed job always has metrics
            raise RuntimeError(f"trial {ask.number}: job {result.job_id} has no metrics")
        value = _objective(metrics, self.sweep.objective.metric)
        state: TrialState = "pruned" if metrics.pruned_at_step is not None else "complete"
        metric = self.sweep.objective.metric
        trial = self.book.ended(
            ask.number,
            state,
            value=value,
            steps=metrics.steps,
            planned_steps=metrics.max_steps,
            pruned_at_step=metrics.pruned_at_step,
            intermediate=tuple(
                (h.step, v) for h in metrics.history if (v := getattr(h, metric)) is not None
            ),
        )
        self.search.tell(ask, state, value)
        self._changed()
        saved = f", {trial.steps_saved} steps saved" if state == "pruned" else ""
        log.info(
            "trial %d: %s (%s) %s %s%s",
            ask.number,
            state,
            result.outcome,
            metric,
            "none" if value is None else f"{value:.4f}",
            saved,
        )

    def _failed(self, ask: Ask, job_id: str, exc: BaseException) -> None:
        reason = _reason(exc)
        self._count_reads()
        if all(t.number != ask.number for t in self.book.record.trials):
            self.book.started(ask.number, job_id, ask.params)
        self.book.ended(ask.number, "failed", reason=reason)
        self.search.tell(ask, "failed", None)
        self._changed()
        log.error("trial %d failed: %s", ask.number, reason)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.book.record)


def _reason(exc: BaseException) -> str:
    """The headline, and the first problem of several (the rest are in the trial's log)."""
    if not isinstance(exc, TrainerError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ProblemsError) and exc.problems:
        more = len(exc.problems) - 1
        return f"{exc.headline}: {exc.problems[0]}" + (f" (and {more} more)" if more else "")
    return exc.headline


def _objective(metrics: JobMetrics, metric: str) -> float | None:
    value = getattr(metrics.final, metric)
    return float(value) if value is not None and math.isfinite(value) else None


def _params(params: dict[str, object]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
