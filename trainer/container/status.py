"""`status.json` and the shipped log: evidence that outlives a lost host."""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import threading
import time
from pathlib import Path
from typing import Any

from trainer.artifacts import utc_now
from trainer.errors import StorageError
from trainer.layout import Layout
from trainer.storage.base import ObjectStore

log = logging.getLogger("quantlab.container")
STATUS = "status.json"


def host_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            facts["gpu"] = {
                "name": props.name,
                "count": torch.cuda.device_count(),
                "memory_gb": round(props.total_memory / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported(),
                "cuda": torch.version.cuda,
            }
    except ImportError:  # pragma: no cover - the image always has torch
        pass
    return facts


class StatusWriter:
    """Holds the job's live state; `write()` puts it to `ml-artifacts/<jobId>/status.json` and
    ships the container log beside it. Called at every state change and periodically."""

    def __init__(
        self,
        store: ObjectStore,
        layout: Layout,
        job_id: str,
        container_id: str | None,
        log_path: Path,
    ) -> None:
        self._store, self._layout, self._job_id = store, layout, job_id
        self._log_path = log_path
        self._log_name = f"logs/{container_id or 'local'}.log"
        self._lock = threading.Lock()
        self._doc: dict[str, Any] = {
            "job_id": job_id,
            "container_id": container_id,
            "state": "starting",
            "started_at": utc_now(),
            "step": 0,
            "epoch": 0,
            "rows_seen": 0,
            "latest": {},
            "host": host_facts(),
        }

    @property
    def doc(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._doc)

    def set_state(self, state: str, **fields: Any) -> None:
        with self._lock:
            self._doc.update(state=state, **fields)
        log.info("state: %s", state)
        self.write()

    def on_progress(self, kind: str, record: dict[str, Any]) -> None:
        """The job's listener: every log step and evaluation lands here (no I/O)."""
        with self._lock:
            if self._doc["state"] == "starting":
                self._doc["state"] = "training"
            self._doc["step"] = record.get("step", self._doc["step"])
            self._doc["epoch"] = record.get("epoch", self._doc["epoch"])
            if kind == "step":
                self._doc["rows_seen"] = record.get("rows_seen", self._doc["rows_seen"])
                keys = ("loss", "lr", "rows_per_s", "eta_s", "grad_norm", "gpu_mem_gb")
                self._doc["latest"] = {k: record[k] for k in keys if k in record}
            else:
                self._doc["last_eval"] = record

    def write(self) -> None:
        with self._lock:
            doc = {**self._doc, "updated_at": utc_now(), "updated_at_epoch": time.time()}
        try:
            self._store.put(
                self._layout.job_file(self._job_id, STATUS),
                json.dumps(doc, indent=2, default=str).encode(),
            )
            if self._log_path.exists():
                self._store.upload(
                    self._layout.job_file(self._job_id, self._log_name), self._log_path
                )
        except StorageError as exc:
            # Evidence is best effort: a flaky store must not kill a paid training run.
            log.warning("could not write status to the store: %s", exc)
