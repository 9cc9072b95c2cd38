"""The dead-man switch and the job's lease: limits the container enforces on itself, and the
proof that it alone runs the job.

Two containers must never train one job at once (a create that Vast.ai processed twice, two
launchers racing). Before it writes anything, a container takes the job's lease
(`ml-artifacts/<jobId>/lease.json`, see `trainer.store.lease`); one that finds another live
holder writes nothing, says why, and destroys its own instance. The holder renews the lease
with every heartbeat and stops the job if another container took it over."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from trainer.errors import StorageError, VerificationError
from trainer.spec.sections import LimitsSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.lease import Lease, LeaseLost
from trainer.store.records import Cause, LauncherHeartbeat, read_record

log = logging.getLogger("quantlab.container")


def take_lease(
    store: ObjectStore, paths: JobPaths, instance: str | None, renew_every_s: float
) -> Lease:
    """The job's lease for this container; LeaseHeld when another container runs the job."""
    lease = Lease(store, paths.lease, instance=instance, renew_every_s=renew_every_s)
    lease.acquire()
    return lease


@dataclass(frozen=True)
class StopReason:
    """Why the job must stop now: the typed cause decides, the reason is for people."""

    cause: Cause
    reason: str


@dataclass
class Watchdog:
    """`check()`, called with every heartbeat, renews the lease and returns why the job must
    stop now, or None.

    Three rules: the lease was taken over by another container (cause `lease`);
    `limits.max_runtime_minutes` since the container started (cause `limit`); and the
    launcher's heartbeat (`ml-artifacts/<jobId>/launcher-heartbeat.json`) older than
    `limits.heartbeat_timeout_minutes` (cause `heartbeat`; 0 turns this off). A launcher that
    detaches writes `"detached": true`, which leaves only the runtime limit."""

    limits: LimitsSpec
    store: ObjectStore
    paths: JobPaths
    started: float  # time.time() at container start
    lease: Lease | None = None
    """Held by this container; None where there is none to renew (a rank other than 0)."""

    def check(self, now: float | None = None) -> StopReason | None:
        now = time.time() if now is None else now
        if self.lease is not None:
            try:
                self.lease.renew()
            except LeaseLost as exc:
                return StopReason("lease", str(exc))
            except StorageError as exc:  # a missed renewal is retried at the next beat
                log.warning("could not renew the job's lease: %s", exc)
        runtime_s = self.limits.max_runtime_minutes * 60
        if now - self.started > runtime_s:
            return StopReason(
                "limit", f"max_runtime exceeded ({self.limits.max_runtime_minutes:g} min)"
            )
        timeout_s = self.limits.heartbeat_timeout_minutes * 60
        if timeout_s <= 0:
            return None
        beat = self._launcher_beat()
        if beat is None or beat.detached:
            return None
        if now - max(beat.updated_at, self.started) > timeout_s:
            return StopReason(
                "heartbeat",
                f"launcher heartbeat stale for {(now - beat.updated_at) / 60:.1f} min (limit "
                f"{self.limits.heartbeat_timeout_minutes:g} min)",
            )
        return None

    def _launcher_beat(self) -> LauncherHeartbeat | None:
        try:
            return read_record(self.store, self.paths.launcher_heartbeat, LauncherHeartbeat)
        except (StorageError, VerificationError):
            return None  # an unreadable beat is no evidence that the launcher is gone
