"""The dead-man switch: limits the container enforces on itself."""

from __future__ import annotations

import time
from dataclasses import dataclass

from trainer.errors import StorageError, VerificationError
from trainer.spec.sections import LimitsSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.records import Cause, LauncherHeartbeat, read_record


@dataclass(frozen=True)
class StopReason:
    """Why the job must stop now: the typed cause decides, the reason is for people."""

    cause: Cause
    reason: str


@dataclass
class Watchdog:
    """`check()` returns why the job must stop now, or None.

    Two rules: `limits.max_runtime_minutes` since the container started (cause `limit`); and
    the launcher's heartbeat (`ml-artifacts/<jobId>/launcher-heartbeat.json`) older than
    `limits.heartbeat_timeout_minutes` (cause `heartbeat`; 0 turns this off). A launcher that
    detaches writes `"detached": true`, which leaves only the runtime limit."""

    limits: LimitsSpec
    store: ObjectStore
    paths: JobPaths
    started: float  # time.time() at container start

    def check(self, now: float | None = None) -> StopReason | None:
        now = time.time() if now is None else now
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
