"""The watch loop: one rented (or attached) instance, polled until there is a verdict on it.

Each poll refreshes the launcher heartbeat, then gathers an `Observation`: the instance row (a
429 or 5xx backs the loop off; only a long run of them ends it), `status.json` written by THIS
container, the log tail every `logs_every_s` (new lines relayed; the result sentinel), the stop
request, this container's failure record, the manifest and whether its hashes verify, and the
money spent. `verdict.decide` judges it; without a verdict the poll reports progress.

The loop destroys nothing itself: the verdict goes back to the run, which does.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import (
    InfraError,
    TrainerError,
    VerificationError,
)
from trainer.job.artifacts import read_failure, read_manifest, verify
from trainer.launcher.attempt import Attempt, Ending, Verdict
from trainer.launcher.events import Progress, Reporter
from trainer.launcher.prefix import write_heartbeat
from trainer.launcher.session import Session
from trainer.launcher.states import InstanceState
from trainer.launcher.vast import Instance, VastAuthError
from trainer.launcher.verdict import Observation, Rules, decide, stopped_from_outside
from trainer.spec.sections import LimitsSpec
from trainer.store.layout import JobPaths
from trainer.store.records import (
    FailureRecord,
    JobManifest,
    StatusDoc,
    StopRequest,
    SweepRecord,
    epoch_of,
    read_record,
)

log = logging.getLogger("quantlab.launcher")
LOG_TAIL_LINES = 200


@dataclass(frozen=True)
class WatchConfig:
    poll_s: float = 10.0
    """Seconds between polls; Vast.ai rate-limits `show instance` at about one per 2 s."""
    logs_every_s: float = 30.0
    """Seconds between log snapshots (two requests each)."""
    max_failures: int = 8
    """Consecutive failed polls (rate limits, 5xx, S3 trouble) before giving up."""
    max_backoff_s: float = 120.0
    detach: bool = False
    """End the watch (DETACHED) as soon as the job has started."""
    final_logs_s: float = 5.0
    """After a success, how long to wait for the container's last line before the verdict
    goes back to be acted on (the container destroys itself right after that line anyway)."""


class Watcher:
    """Polls one attempt until a verdict; setting `stop` (any thread) ends it: CANCELLED."""

    def __init__(
        self,
        *,
        paths: JobPaths,
        limits: LimitsSpec,
        session: Session,
        reporter: Reporter,
        config: WatchConfig,
        spent: Callable[[Attempt], float],
        over_budget: Callable[[float], str | None],
        sweep: bool = False,
    ) -> None:
        self.paths, self.session, self.store = paths, session, session.store
        self.rules = Rules(job_id=paths.job_id, limits=limits, detach=config.detach)
        self.reporter, self.config = reporter, config
        self.spent, self.over_budget = spent, over_budget
        self.sweep = sweep
        """The instance runs a sweep: `sweep.json` committed is the success, not a manifest."""
        self.stop = threading.Event()
        self._last_logs = 0.0
        self._step: int | None = None

    def watch(self, a: Attempt) -> Verdict:
        failures = 0
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                obs = self.observe(a, began)
                failures = 0
            except VastAuthError:
                raise
            except InfraError as exc:  # rate limits, 5xx, S3 trouble: back off, keep watching
                failures += 1
                if failures >= self.config.max_failures:
                    raise InfraError(
                        f"lost track of instance {a.instance_id} after {failures} failed polls "
                        f"({exc}); it is destroyed now, see "
                        f"`quantlab-train status {self.paths.job_id}`"
                    ) from None
                wait = min(self.config.max_backoff_s, self.config.poll_s * 2**failures)
                self.reporter.emit("poll_failed", str(exc), failures=failures, retry_in_s=wait)
                self.stop.wait(wait)
                continue
            a.polls_stopped += 1 if stopped_from_outside(obs) else 0
            verdict = decide(obs, a, self.rules)
            if verdict is not None:
                self._last_lines(a, verdict)
                # A job that ended between two polls still reports the step it ended at, and
                # one that ended before its first report still gets its row (budget, try).
                self._report(a, obs, self._own_status(a) or obs.status)
                return verdict
            self._report(a, obs)
            doc = obs.status
            if doc is not None and doc.state == "training" and a.first_step_at is None:
                a.first_step_at = obs.now  # this instance's first training progress
            self.stop.wait(max(0.0, self.config.poll_s - (time.monotonic() - began)))
        return Verdict(Ending.CANCELLED, "stop requested")

    # -- one poll: gather what there is to see -------------------------------------------
    def observe(self, a: Attempt, now: float) -> Observation:
        write_heartbeat(self.store, self.paths, False, [a.instance_id])
        row = self.session.vast.show_instance(a.instance_id)
        self._track(a, row, now)
        check_price = row is not None and not a.checked_price
        a.checked_price = a.checked_price or row is not None
        status = read_record(self.store, self.paths.status, StatusDoc)
        if status is not None and not status.written_by(a.instance_id):
            status = None  # an earlier attempt's container, or none yet
        if status is not None and a.job_started is None:
            a.job_started = now
            self.reporter.emit(
                "job_started",
                instance_id=a.instance_id,
                say=f"job started on instance {a.instance_id}",
            )
        gone = a.state in (InstanceState.EXITED, InstanceState.GONE)
        a.polls_gone += 1 if gone else 0
        if gone or now - self._last_logs >= self.config.logs_every_s:
            self._follow_logs(a, now)
        stop = read_record(self.store, self.paths.stop_request, StopRequest)
        manifest, problem = (None, None) if self.sweep else self._manifest()
        spent = self.spent(a)
        return Observation(
            now=now,
            row=row,
            status=status,
            sentinel=a.tail.result,
            failure=self._own_failure(status),
            stop_requested=stop is not None and stop.requested_at >= a.created_wall - 1,
            manifest=manifest,
            manifest_problem=problem,
            sweep_committed=self.sweep and self._sweep_committed(),
            check_price=check_price,
            spent_usd=spent,
            over_budget=self.over_budget(spent),
        )

    def _track(self, a: Attempt, row: Instance | None, now: float) -> None:
        """Track the state (an event per change) and the time seen running."""
        state = row.state if row is not None else InstanceState.GONE
        if row is not None:
            a.machine_id = row.machine_id or a.machine_id
            a.gpu = f"{row.num_gpus}× {row.gpu_name}" if row.gpu_name else a.gpu
        if state is InstanceState.RUNNING and a.running_since is None:
            a.running_since = now
        elif state is not InstanceState.RUNNING and a.running_since is not None:
            a.running_s += now - a.running_since
            a.running_since = None
        if state is not a.state:
            self.reporter.emit(
                "instance_state",
                (row.status_msg or "") if row is not None else "",
                instance_id=a.instance_id,
                state=state.value,
                previous=a.state.value if a.state else None,
                actual_status=row.actual_status if row is not None else None,
            )
            a.state = state

    def _follow_logs(self, a: Attempt, now: float) -> None:
        self._last_logs = now
        try:
            fresh = a.tail.update(self.session.vast.logs(a.instance_id, tail=LOG_TAIL_LINES))
        except InfraError as exc:
            log.debug("no log snapshot of instance %s: %s", a.instance_id, exc)
            return
        self._relay(a, fresh)

    def _relay(self, a: Attempt, lines: list[str]) -> None:
        if lines:
            self.reporter.emit("log", instance_id=a.instance_id, lines=lines)
            for line in lines:
                self.reporter.say(f"  [{a.instance_id}] {line}")

    def _last_lines(self, a: Attempt, verdict: Verdict) -> None:
        """Relay the job's last lines before its instance goes. When the job itself ended,
        wait (at most `final_logs_s`) for its container's last words: the result line in
        the Vast.ai log, or its final `status.json`, written with the log it ships to the
        store. Then relay what that shipped log has beyond the lines already relayed: Vast.ai
        drops an instance's log the moment the container destroys itself."""
        ended = verdict.ending in (Ending.SUCCEEDED, Ending.JOB_FAILED, Ending.LIMIT)
        deadline = time.monotonic() + (self.config.final_logs_s if ended else 0.0)
        while True:
            self._follow_logs(a, time.monotonic())
            if a.tail.result is not None or self._said_last_words(a):
                break
            if time.monotonic() >= deadline or self.stop.wait(min(0.5, self.config.poll_s)):
                break
        try:
            shipped = self.store.get(self.paths.log(str(a.instance_id)))
        except TrainerError:
            return
        self._relay(a, a.tail.catch_up(shipped.decode("utf-8", "replace")))

    def _own_status(self, a: Attempt) -> StatusDoc | None:
        """This attempt's container's `status.json` as it is now; None when there is none
        (or another attempt's, or the store cannot say)."""
        try:
            status = read_record(self.store, self.paths.status, StatusDoc)
        except TrainerError:
            return None
        return status if status is not None and status.written_by(a.instance_id) else None

    def _said_last_words(self, a: Attempt) -> bool:
        status = self._own_status(a)
        return status is not None and status.state not in ("starting", "training")

    def _manifest(self) -> tuple[JobManifest | None, str | None]:
        manifest = read_manifest(self.store, self.paths)
        if manifest is None:
            return None, None
        with tempfile.TemporaryDirectory(prefix="quantlab-verify-") as tmp:
            try:
                verify(self.store, self.paths, Path(tmp))
            except VerificationError as exc:
                return manifest, str(exc)
        return manifest, None

    def _sweep_committed(self) -> bool:
        record = read_record(self.store, self.paths.sweep, SweepRecord)
        return record is not None and record.state == "committed"

    def _own_failure(self, status: StatusDoc | None) -> FailureRecord | None:
        """`failure.json` when written after this container started (a container of an
        earlier attempt may still be writing its own as it is stopped)."""
        if status is None:
            return None
        record = read_failure(self.store, self.paths)
        if record is None or epoch_of(record.failed_at) < epoch_of(status.started_at):
            return None
        return record

    # -- say how it goes (each poll, and once more at the verdict) ---------------------
    def _report(self, a: Attempt, obs: Observation, doc: StatusDoc | None = None) -> None:
        """The status line, and a `progress` event whenever the step moved; `doc` is the
        status to show where it is newer than the poll's."""
        doc = doc if doc is not None else obs.status
        state = doc.state if doc is not None else (a.state or "pending")
        limits = self.rules.limits
        self.reporter.progress(
            Progress(
                state=str(state),
                instance_id=a.instance_id,
                gpu=a.gpu,
                attempt=a.number,
                max_attempts=limits.max_attempts,
                spent_usd=obs.spent_usd,
                budget_usd=limits.max_cost_usd,
                step=doc.step if doc else None,
                total_steps=doc.total_steps if doc else None,
                epoch=doc.epoch if doc else None,
                loss=doc.latest.loss if doc else None,
                rows_per_s=doc.latest.rows_per_s if doc else None,
                eta_s=doc.latest.eta_s if doc else None,
                val_ic=doc.last_eval.ic if doc and doc.last_eval else None,
                elapsed_s=obs.now - a.created_at,
            )
        )
        self._progress(a, doc, obs.spent_usd)

    def _progress(self, a: Attempt, doc: StatusDoc | None, spent_usd: float) -> None:
        """A `progress` event when the step moved since the last one."""
        if doc is None:
            return
        if doc.step != self._step:
            self._step = doc.step
            self.reporter.emit(
                "progress",
                instance_id=a.instance_id,
                state=doc.state,
                step=doc.step,
                epoch=doc.epoch,
                rows_seen=doc.rows_seen,
                total_steps=doc.total_steps,
                latest=doc.latest.model_dump(exclude_none=True),
                last_eval=doc.last_eval.model_dump() if doc.last_eval else None,
                spent_usd=round(spent_usd, 6),
            )
