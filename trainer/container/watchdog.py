"""The dead-man switch: limits the container enforces on itself."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from trainer.errors import ObjectNotFound, StorageError
from trainer.layout import Layout
from trainer.spec.model import LimitsSpec
from trainer.storage.base import ObjectStore

LAUNCHER_HEARTBEAT = "launcher-heartbeat.json"


@dataclass
class Watchdog:
    """`check()` returns why the job must stop now, or None.

    Two rules: `limits.max_runtime_minutes` since the container started; and the launcher's
    heartbeat object (`ml-artifacts/<jobId>/launcher-heartbeat.json`, `updated_at` epoch
    seconds) older than `limits.heartbeat_timeout_minutes` (0 turns this off). A launcher that
    detaches writes `"detached": true`, which leaves only the runtime limit."""

    limits: LimitsSpec
    store: ObjectStore
    layout: Layout
    job_id: str
    started: float  # time.time() at container start

    def check(self, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        runtime_s = self.limits.max_runtime_minutes * 60
        if now - self.started > runtime_s:
            return f"max_runtime exceeded ({self.limits.max_runtime_minutes:g} min)"
        timeout_s = self.limits.heartbeat_timeout_minutes * 60
        if timeout_s <= 0:
            return None
        beat = self._launcher_beat()
        if beat is None:
            return None
        if beat.get("detached"):
            return None
        last = float(str(beat.get("updated_at", self.started)))
        if now - max(last, self.started) > timeout_s:
            return (
                f"launcher heartbeat stale for {(now - last) / 60:.1f} min (limit "
                f"{self.limits.heartbeat_timeout_minutes:g} min)"
            )
        return None

    def _launcher_beat(self) -> dict[str, object] | None:
        try:
            raw = self.store.get(self.layout.job_file(self.job_id, LAUNCHER_HEARTBEAT))
            data = json.loads(raw)
            return data if isinstance(data, dict) else None
        except (ObjectNotFound, StorageError, ValueError):
            return None
