"""What the launcher tells the world: NDJSON events for machines, a live status line for people.

Every event is one JSON object on its own line (`--json`, stdout): `ts` (UTC ISO time),
`job_id`, `event`, `reason` when there is one, and the event's fields. People get progress on
stderr: on a terminal, a live table with a row per job (`board`), every other line printed
above it; otherwise plain append-only lines, one per job on change (at most every
`line_every_s`, or at once when the state changes). Everything either stream
carries, and every log record of the `quantlab` loggers, passes through `trainer.redact`.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, TextIO

from trainer.launcher.board import Board, Progress, cells
from trainer.redact import Secrets
from trainer.store.records import utc_now

__all__ = ["Progress", "Reporter", "status_line"]


def status_line(job_id: str, p: Progress) -> str:
    """The plain line for a log file or a pipe: every figure the live table has, labelled."""
    c = cells(p)
    parts = [job_id, p.state]
    if p.attempt is not None:
        parts.append(f"attempt {c['try']}")
    if p.instance_id is not None:
        parts.append(f"instance {p.instance_id}" + (f" ({p.gpu})" if p.gpu else ""))
    parts += [c["spent"], f"{p.elapsed_s:.0f}s"]
    if p.step is not None:
        parts.append(f"step {c['step']}" + (f" epoch {p.epoch}" if p.epoch is not None else ""))
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.rows_per_s is not None:
        parts.append(f"{c['rows/s']} rows/s")
    if p.eta_s is not None and p.state == "training":
        parts.append(f"eta {c['eta']}")
    if p.val_ic is not None:
        parts.append(f"val ic {c['val ic']}")
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
        self._board = _board_for(human, json_out)
        self._line = ""
        self._line_state = ""
        self._line_at = 0.0

    def for_job(self, job_id: str) -> Reporter:
        """The same streams, secrets and event list, with events tagged for `job_id`."""
        child = Reporter(
            job_id,
            json_out=self.json_out,
            human=self.human,
            secrets=self.secrets,
            line_every_s=self.line_every_s,
        )
        child.events, child._lock, child._board = self.events, self._lock, self._board
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
        if event == "result" and self._board is not None:
            metrics = fields.get("metrics") or {}
            outcome, cost = str(fields.get("outcome", "")), fields.get("cost_usd")
            self._board.finish(self.job_id, outcome, metrics.get("ic"), cost)
        if say is not None:
            self.say(say)

    def say(self, text: str) -> None:
        if self.human is None:
            return
        text = self.secrets.redact(text)
        if self._board is not None:
            self._board.print(text)
            return
        with self._lock:
            self.human.write(text + "\n")
            self.human.flush()

    def progress(self, p: Progress) -> None:
        """Update this job's row (a terminal), or print its line when it changed."""
        if self.human is None:
            return
        if self._board is not None:
            self._board.update(self.job_id, p)
            return
        line = self.secrets.redact(status_line(self.job_id, p))
        now = time.monotonic()
        with self._lock:
            changed_state = p.state != self._line_state
            if line == self._line:
                return
            if not changed_state and now - self._line_at < self.line_every_s:
                return
            self._line, self._line_state, self._line_at = line, p.state, now
            self.human.write(line + "\n")
            self.human.flush()

    def close(self) -> None:
        """Stop redrawing; the table's last drawing stays on the screen."""
        if self._board is not None:
            self._board.close()


def _board_for(human: TextIO | None, json_out: TextIO | None) -> Board | None:
    """A live table when people watch stderr on a terminal, and NDJSON (if any) does not go
    to a terminal too: events printed through a redrawn table would tear it."""
    if human is None or not _is_tty(human) or (json_out is not None and _is_tty(json_out)):
        return None
    try:
        return Board(human)
    except ImportError:  # rich comes with the launch extra; without it, plain lines
        return None


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
