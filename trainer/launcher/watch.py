"""The watch loop: one rented (or attached) instance, polled until there is a verdict on it.

Each poll refreshes the launcher heartbeat, then reads, and stops at the first verdict:

1. the instance row (a 429 or 5xx backs the loop off; only a long run of them ends it);
2. `status.json` written by THIS container (its `container_id`): the job has started;
3. the log tail, every `logs_every_s` (new lines relayed; the `QUANTLAB_RESULT` sentinel);
4. the manifest: committed and its hashes verified → SUCCEEDED;
5. the host: price or rental type read back unlike the offer, pull/OCI failure (FAILED),
   offline (LOST) or outbid → RETRY on another offer, the host marked bad where it failed;
6. the job: a stop request → CANCELLED; the sentinel's non-zero exit code, `status.json`
   saying failed/stopped, or a `failure.json` this container wrote → JOB_FAILED (LIMIT for
   the runtime limit; RETRY when something outside stopped the container);
7. EXITED or GONE with none of the above: one more poll for late records, then decide;
8. the limits: no status within `limits.provision_timeout_minutes` of create → RETRY, host
   marked bad; `limits.max_runtime_minutes` since the job started, or `limits.max_cost_usd`
   spent across attempts → LIMIT.

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
from typing import Any

from trainer.artifacts import FAILURE, VerificationError, read_manifest, verify
from trainer.container.status import STATUS
from trainer.errors import EXIT_CANCELLED, EXIT_LIMIT, InfraError
from trainer.launcher.attempt import Attempt, Ending, Verdict
from trainer.launcher.events import Progress, Reporter
from trainer.launcher.offers import price_mismatch
from trainer.launcher.records import STOP_REQUEST, epoch, read_json, write_heartbeat
from trainer.launcher.session import Session
from trainer.launcher.states import InstanceState
from trainer.launcher.vast import Instance, VastAuthError
from trainer.layout import Layout
from trainer.spec.model import LimitsSpec

log = logging.getLogger("quantlab.launcher")
LOG_TAIL_LINES = 200
OUTSIDE_STOPS = ("signal ", "KeyboardInterrupt")
"""How a container's reason starts when something outside stopped it (outbid, host stop)."""


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


class Watcher:
    """Polls one attempt until a verdict; setting `stop` (any thread) ends it: CANCELLED."""

    def __init__(
        self,
        *,
        job_id: str,
        limits: LimitsSpec,
        session: Session,
        layout: Layout,
        reporter: Reporter,
        config: WatchConfig,
        spent: Callable[[Attempt], float],
        over_budget: Callable[[float], str | None],
    ) -> None:
        self.job_id, self.limits, self.session = job_id, limits, session
        self.store, self.layout, self.reporter, self.config = (
            session.store,
            layout,
            reporter,
            config,
        )
        self.spent, self.over_budget = spent, over_budget
        self.stop = threading.Event()
        self._last_logs = 0.0
        self._step: object = None

    def watch(self, a: Attempt) -> Verdict:
        failures = 0
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                verdict = self._poll(a, began)
                failures = 0
            except VastAuthError:
                raise
            except InfraError as exc:  # rate limits, 5xx, S3 trouble: back off, keep watching
                failures += 1
                if failures >= self.config.max_failures:
                    raise InfraError(
                        f"lost track of instance {a.instance_id} after {failures} failed polls "
                        f"({exc}); it is destroyed now, see `quantlab-train status {self.job_id}`"
                    ) from None
                wait = min(self.config.max_backoff_s, self.config.poll_s * 2**failures)
                self.reporter.emit("poll_failed", str(exc), failures=failures, retry_in_s=wait)
                self.stop.wait(wait)
                continue
            if verdict is not None:
                return verdict
            self.stop.wait(max(0.0, self.config.poll_s - (time.monotonic() - began)))
        return Verdict(Ending.CANCELLED, "stop requested")

    # -- one poll -------------------------------------------------------------------------
    def _poll(self, a: Attempt, now: float) -> Verdict | None:
        write_heartbeat(self.store, self.layout, self.job_id, False, [a.instance_id])
        row = self.session.vast.show_instance(a.instance_id)
        self._observe(a, row, now)
        status = read_json(self.store, self.layout, self.job_id, STATUS)
        if status is not None and str(status.get("container_id")) != str(a.instance_id):
            status = None  # an earlier attempt's container, or none yet
        if status is not None and a.job_started is None:
            a.job_started = now
            self.reporter.emit(
                "job_started",
                instance_id=a.instance_id,
                say=f"job started on instance {a.instance_id}",
            )
        gone = a.state in (InstanceState.EXITED, InstanceState.GONE)
        if gone or now - self._last_logs >= self.config.logs_every_s:
            self._follow_logs(a, now)
        verdict = self._committed() or self._broken(a, row) or self._job_failure(a, status)
        if verdict is None and self.config.detach and a.job_started is not None:
            return Verdict(Ending.DETACHED, "the job is running; the launcher detached")
        return verdict or self._ended(a) or self._limits(a, now, status)

    def _observe(self, a: Attempt, row: Instance | None, now: float) -> None:
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
        if fresh:
            self.reporter.emit("log", instance_id=a.instance_id, lines=fresh)
            for line in fresh:
                self.reporter.say(f"  [{a.instance_id}] {line}")

    # -- verdicts -------------------------------------------------------------------------
    def _committed(self) -> Verdict | None:
        manifest = read_manifest(self.store, self.layout, self.job_id)
        if manifest is None:
            return None
        with tempfile.TemporaryDirectory(prefix="quantlab-verify-") as tmp:
            try:
                verify(self.store, self.layout, self.job_id, Path(tmp))
            except VerificationError as exc:
                return Verdict(Ending.JOB_FAILED, f"the committed artifacts do not verify: {exc}")
        return Verdict(Ending.SUCCEEDED, "manifest committed and verified", manifest=manifest)

    def _broken(self, a: Attempt, row: Instance | None) -> Verdict | None:
        """The host is not what was rented, or failed the container: it will not recover."""
        where = f"instance {a.instance_id} on machine {a.machine_id}"
        if row is not None and a.candidate is not None and not a.checked_price:
            a.checked_price = True
            mismatch = price_mismatch(a.candidate, row.dph_total, row.is_bid)
            if mismatch:
                return Verdict(Ending.RETRY, f"{where} {mismatch}")
        if a.state is InstanceState.FAILED:
            message = (row.status_msg if row is not None else None) or "?"
            return Verdict(Ending.RETRY, f"{where} could not start the container: {message}", True)
        if a.state is InstanceState.LOST:
            status = row.actual_status if row is not None else "?"
            return Verdict(Ending.RETRY, f"{where} stopped reporting ({status})", True)
        if a.state is InstanceState.STOPPED_OUTBID:
            return Verdict(Ending.RETRY, f"{where} was stopped (outbid or out of credit)")
        return None

    def _job_failure(self, a: Attempt, status: dict[str, Any] | None) -> Verdict | None:
        """What `stop` or the container reported: a stop, a failure, a limit, an outside stop."""
        stop = read_json(self.store, self.layout, self.job_id, STOP_REQUEST) or {}
        if float(stop.get("requested_at") or 0) >= a.created_wall - 1:
            return Verdict(Ending.CANCELLED, "stopped by `quantlab-train stop`")
        sentinel = a.tail.result or {}
        code = int(sentinel.get("exit_code") or 0) or None
        if code is not None:
            reason = str(sentinel.get("reason") or sentinel.get("outcome") or "failed")
        elif status is not None and status.get("state") in ("failed", "stopped"):
            reason = str(status.get("reason") or status["state"])
        elif (record := self._own_failure_record(status)) is not None:
            reason = str(record.get("reason") or "failure recorded")
        else:
            return None
        if code == EXIT_CANCELLED or reason.startswith(OUTSIDE_STOPS):
            where = f"instance {a.instance_id} on machine {a.machine_id}"
            return Verdict(Ending.RETRY, f"{where}: the container was stopped ({reason})")
        if code == EXIT_LIMIT or "max_runtime" in reason:
            return Verdict(Ending.LIMIT, f"the job reported: {reason}")
        return Verdict(Ending.JOB_FAILED, f"the job reported: {reason}")

    def _own_failure_record(self, status: dict[str, Any] | None) -> dict[str, Any] | None:
        """`failure.json` when written after this container started (a container of an
        earlier attempt may still be writing its own as it is stopped)."""
        record = read_json(self.store, self.layout, self.job_id, FAILURE)
        if record is None or status is None:
            return None
        try:
            return record if epoch(record.get("failed_at")) >= epoch(status["started_at"]) else None
        except (ValueError, KeyError):
            return None

    def _ended(self, a: Attempt) -> Verdict | None:
        """The container ended, or the instance vanished, without a manifest or a failure."""
        if a.state not in (InstanceState.EXITED, InstanceState.GONE):
            return None
        if not a.gone_seen:  # the container writes its records before it ends: look once more
            a.gone_seen = True
            return None
        where = f"instance {a.instance_id} on machine {a.machine_id}"
        what = "exited" if a.state is InstanceState.EXITED else "disappeared"
        if a.job_started is None:
            return Verdict(Ending.RETRY, f"{where} {what} before the job started", True)
        if a.state is InstanceState.EXITED:
            return Verdict(
                Ending.JOB_FAILED,
                f"{where}: the container exited without committing or reporting a failure "
                f"(killed, out of memory?); see `quantlab-train logs {self.job_id}`",
            )
        return Verdict(Ending.RETRY, f"{where} disappeared while the job ran", True)

    def _limits(self, a: Attempt, now: float, status: dict[str, Any] | None) -> Verdict | None:
        limits = self.limits
        if a.job_started is None and now - a.created_at > limits.provision_timeout_minutes * 60:
            return Verdict(
                Ending.RETRY,
                f"instance {a.instance_id} on machine {a.machine_id}: no status from the "
                f"container within {limits.provision_timeout_minutes:g} min (state {a.state})",
                bad_host=True,
            )
        if a.job_started is not None and now - a.job_started > limits.max_runtime_minutes * 60:
            return Verdict(
                Ending.LIMIT, f"max_runtime reached ({limits.max_runtime_minutes:g} min)"
            )
        spent = self.spent(a)
        over = self.over_budget(spent)
        if over is not None:
            return Verdict(Ending.LIMIT, over)
        self._report(a, now, status, spent)
        return None

    def _report(self, a: Attempt, now: float, status: dict[str, Any] | None, spent: float) -> None:
        """The status line, and a `progress` event whenever the step moved."""
        doc = status or {}
        latest = doc.get("latest") or {}
        latest = latest if isinstance(latest, dict) else {}
        step, state = doc.get("step"), str(doc.get("state") or a.state or "pending")
        self.reporter.progress(
            Progress(
                state=state,
                instance_id=a.instance_id,
                gpu=a.gpu,
                spent_usd=spent,
                step=step,
                epoch=doc.get("epoch"),
                loss=latest.get("loss"),
                elapsed_s=now - a.created_at,
            )
        )
        own = status is not None and str(doc.get("container_id")) == str(a.instance_id)
        if own and state == "training" and a.first_step_at is None:
            a.first_step_at = now  # this instance's first training progress
        if status is not None and step != self._step:
            self._step = step
            self.reporter.emit(
                "progress",
                instance_id=a.instance_id,
                state=state,
                step=step,
                epoch=doc.get("epoch"),
                rows_seen=doc.get("rows_seen"),
                latest=latest,
                last_eval=doc.get("last_eval"),
                spent_usd=round(spent, 6),
            )
