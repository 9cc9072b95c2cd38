"""What the launcher tells the world: NDJSON events for machines, a live status line for people.

Every event is one JSON object on its own line (`--json`, stdout): `ts` (UTC ISO time),
`job_id`, `event`, `reason` when there is one, and the event's fields. People get the status
line on stderr, redrawn in place on a terminal and printed on change (at most every
`line_every_s`, or at once when the state changes) otherwise. Everything either stream
carries, and every log record of the `quantlab` loggers, passes through `trainer.redact`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from trainer.redact import Secrets
from trainer.store.records import utc_now


@dataclass(frozen=True)
class Progress:
    """One status-line snapshot."""

    state: str
    instance_id: int | None = None
    gpu: str = ""
    spent_usd: float = 0.0
    step: int | None = None
    epoch: int | None = None
    loss: float | None = None
    elapsed_s: float = 0.0


def status_line(job_id: str, p: Progress) -> str:
    parts = [job_id, p.state]
    if p.instance_id is not None:
        parts.append(f"instance {p.instance_id}" + (f" ({p.gpu})" if p.gpu else ""))
    parts.append(f"${p.spent_usd:.4f}")
    parts.append(f"{p.elapsed_s:.0f}s")
    if p.step is not None:
        parts.append(f"step {p.step}" + (f" epoch {p.epoch}" if p.epoch is not None else ""))
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    return "  ".join(parts)


class Reporter:
    """Collects events (`events`), writes them as NDJSON to `json_out` and human text to
    `human`; either may be None (the Python API's default is silence)."""

    def __init__(
        self,
        job_id: str = "",
        *,
        json_out: TextIO | None = None,
        human: TextIO | None = None,
        secrets: Secrets | None = None,
        line_every_s: float = 10.0,
    ) -> None:
        self.job_id = job_id
        self.json_out = json_out
        self.human = human
        self.secrets = secrets or Secrets()
        self.line_every_s = line_every_s
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._live = bool(human is not None and getattr(human, "isatty", lambda: False)())
        self._line = ""
        self._line_state = ""
        self._line_at = 0.0
        self._drawn = False

    def for_job(self, job_id: str) -> Reporter:
        """The same streams, secrets and event list, with events tagged for `job_id`."""
        child = Reporter(
            job_id,
            json_out=self.json_out,
            human=self.human,
            secrets=self.secrets,
            line_every_s=self.line_every_s,
        )
        child.events, child._lock = self.events, self._lock
        return child

    def emit(self, event: str, reason: str = "", *, say: str | None = None, **fields: Any) -> None:
        """Record an event; `say` is the human sentence for it, if any."""
        record: dict[str, Any] = {"ts": utc_now(), "job_id": self.job_id, "event": event}
        if reason:
            record["reason"] = reason
        record.update(fields)
        text = self.secrets.redact(json.dumps(record, default=str, sort_keys=False))
        with self._lock:
            self.events.append(json.loads(text))
            if self.json_out is not None:
                self.json_out.write(text + "\n")
                self.json_out.flush()
        if say is not None:
            self.say(say)

    def say(self, text: str) -> None:
        if self.human is None:
            return
        with self._lock:
            self._clear_live()
            self.human.write(self.secrets.redact(text) + "\n")
            self.human.flush()

    def progress(self, p: Progress) -> None:
        """Update the status line."""
        if self.human is None:
            return
        line = self.secrets.redact(status_line(self.job_id, p))
        now = time.monotonic()
        with self._lock:
            changed_state = p.state != self._line_state
            if line == self._line and not self._live:
                return
            if not self._live and not changed_state and now - self._line_at < self.line_every_s:
                return
            self._line, self._line_state, self._line_at = line, p.state, now
            if self._live:
                self.human.write("\r\033[K" + line)
                self._drawn = True
            else:
                self.human.write(line + "\n")
            self.human.flush()

    def close(self) -> None:
        if self.human is None:
            return
        with self._lock:
            self._clear_live()

    def _clear_live(self) -> None:
        if self._live and self._drawn and self.human is not None:
            self.human.write("\r\033[K")
            self._drawn = False
