"""Hosts that failed a job, remembered so the next offer search skips them.

A machine that never started the container, failed to pull or start it, or dropped off the
network is skipped for the rest of the launch, and, when a file is given (by default
`~/.cache/quantlab-trainer/bad-hosts.json`, honouring XDG_CACHE_HOME), for `ttl_s` after that
by later launches on this computer too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from trainer.errors import VerificationError
from trainer.store.records import BadHost, BadHostsFile, parse_record

log = logging.getLogger("quantlab.launcher")

DEFAULT_TTL_S = 24 * 3600.0


def default_bad_hosts_file() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "quantlab-trainer" / "bad-hosts.json"


class BadHosts:
    """machine_id → (until, reason); thread-safe; the file is best effort, never fatal."""

    def __init__(self, path: Path | None = None, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._hosts: dict[int, tuple[float, str]] = self._load()

    def add(self, machine_id: int, reason: str) -> None:
        if machine_id <= 0:
            return
        with self._lock:
            self._hosts[machine_id] = (time.time() + self.ttl_s, reason)
            self._save()
        log.info("machine %s marked bad: %s", machine_id, reason)

    def machines(self) -> frozenset[int]:
        now = time.time()
        with self._lock:
            return frozenset(m for m, (until, _) in self._hosts.items() if until > now)

    def __contains__(self, machine_id: object) -> bool:
        return machine_id in self.machines()

    def _load(self) -> dict[int, tuple[float, str]]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            found = parse_record(BadHostsFile, self.path.read_bytes(), str(self.path))
        except (OSError, VerificationError) as exc:
            log.warning("ignoring the bad-host list %s: %s", self.path, exc)
            return {}
        now = time.time()
        return {m: (h.until, h.reason) for m, h in found.hosts.items() if h.until > now}

    def _save(self) -> None:
        if self.path is None:
            return
        hosts = {m: BadHost(until=u, reason=r) for m, (u, r) in self._hosts.items()}
        body = BadHostsFile(hosts=hosts).to_json()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".bad-hosts-")
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save the bad-host list %s: %s", self.path, exc)
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
