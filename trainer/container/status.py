"""`status.json` and the shipped log: evidence that outlives a lost host."""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
import time
from pathlib import Path
from typing import Any

from trainer.errors import StorageError
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.records import EvalRecord, JobState, Latest, StatusDoc, utc_now, write_record

log = logging.getLogger("quantlab.container")


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
        self, store: ObjectStore, paths: JobPaths, container_id: str | None, log_path: Path
    ) -> None:
        self._store, self._paths = store, paths
        self._log_path = log_path
        self._log_loc = paths.log(container_id)
        self._lock = threading.Lock()
        self._doc = StatusDoc(
            job_id=paths.job_id,
            container_id=container_id,
            state="starting",
            started_at=utc_now(),
            host=host_facts(),
        )

    @property
    def doc(self) -> StatusDoc:
        with self._lock:
            return self._doc

    def set_state(self, state: JobState, **fields: Any) -> None:
        with self._lock:
            self._doc = self._doc.model_copy(update={"state": state, **fields})
        log.info("state: %s", state)
        self.write()

    def on_progress(self, kind: str, record: dict[str, Any]) -> None:
        """The job's listener: every log step and evaluation lands here (no I/O)."""
        with self._lock:
            doc = self._doc
            update: dict[str, Any] = {
                "state": "training" if doc.state == "starting" else doc.state,
                "step": int(record.get("step", doc.step)),
                "epoch": int(record.get("epoch", doc.epoch)),
            }
            if kind == "step":
                update["rows_seen"] = int(record.get("rows_seen", doc.rows_seen))
                update["total_steps"] = record.get("total_steps", doc.total_steps)
                update["latest"] = Latest.model_validate(record)
            else:
                update["last_eval"] = EvalRecord.model_validate(record)
            self._doc = doc.model_copy(update=update)

    def write(self) -> None:
        with self._lock:
            doc = self._doc.model_copy(
                update={"updated_at": utc_now(), "updated_at_epoch": time.time()}
            )
        try:
            write_record(self._store, self._paths.status, doc)
            if self._log_path.exists():
                self._store.upload(self._log_loc, self._log_path)
        except StorageError as exc:
            # Evidence is best effort: a flaky store must not kill a paid training run.
            log.warning("could not write status to the store: %s", exc)
