"""One instance of a job (an attempt): what it costs so far, and the verdict that ended it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from trainer.launcher.logtail import LogTail
from trainer.launcher.offers import Candidate
from trainer.launcher.states import InstanceState
from trainer.store.records import Cause, JobManifest


class Ending(enum.StrEnum):
    SUCCEEDED = "succeeded"
    JOB_FAILED = "job_failed"
    LIMIT = "limit"
    RETRY = "retry"
    """The host or the provider failed, not the job: another offer may work."""
    DETACHED = "detached"
    CANCELLED = "cancelled"
    ELSEWHERE = "elsewhere"
    """Another instance of the job holds its lease and runs it: watch that one instead."""


@dataclass(frozen=True)
class Verdict:
    ending: Ending
    reason: str
    bad_host: bool = False
    """Skip this machine from now on (it failed to start or keep the container)."""
    manifest: JobManifest | None = None
    holder: int | None = None
    """ELSEWHERE: the instance that runs the job, when the container named it."""
    cause: Cause | None = None
    """RETRY: what happened to the instance (`outbid`, `host_offline`, or `signal` when the
    container was stopped from outside and the provider never said why)."""


@dataclass
class Attempt:
    """One instance of the job, rented by this launch or attached to."""

    number: int
    instance_id: int
    candidate: Candidate | None
    """The offer it was rented from; None when attached."""
    attached: bool
    created_at: float
    """time.monotonic() at create (estimated from Vast's start_date when attached)."""
    created_wall: float
    """Epoch seconds at create."""
    dph: float
    storage_per_hour: float
    machine_id: int = 0
    gpu: str = ""
    state: InstanceState | None = None
    job_started: float | None = None
    """time.monotonic() when this container's first status.json was seen."""
    first_step_at: float | None = None
    """time.monotonic() when this container first reported training progress."""
    running_since: float | None = None
    running_s: float = 0.0
    ended_at: float | None = None
    polls_gone: int = 0
    """Polls that saw the container exited or the instance gone."""
    polls_stopped: int = 0
    """Polls that saw the container report a stop from outside (a signal), while the
    instance still looked up: the provider may yet say why (outbid, host offline)."""
    checked_price: bool = False
    verdict: Verdict | None = None
    tail: LogTail = field(default_factory=LogTail)

    def cost(self, now: float | None = None) -> float:
        """Dollars so far: the disk from create to now (or the end), the rest of the hourly
        price for the time the instance was seen running."""
        now = self.ended_at or (time.monotonic() if now is None else now)
        running = self.running_s + (now - self.running_since if self.running_since else 0.0)
        storage = self.storage_per_hour * max(0.0, now - self.created_at)
        return (storage + (self.dph - self.storage_per_hour) * running) / 3600

    def end(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.running_since is not None:
            self.running_s += now - self.running_since
            self.running_since = None
        self.ended_at = self.ended_at or now

    def summary(self) -> dict[str, Any]:
        """The attempt as the result line lists it."""
        offer = self.candidate.offer if self.candidate else None
        end = self.ended_at or time.monotonic()
        return {
            "number": self.number,
            "instance_id": self.instance_id,
            "offer_id": offer.id if offer else None,
            "machine_id": self.machine_id,
            "gpu": self.gpu,
            "dph": round(self.dph, 6),
            "attached": self.attached,
            "outcome": self.verdict.ending.value if self.verdict else "unfinished",
            "reason": self.verdict.reason if self.verdict else "",
            "cause": self.verdict.cause if self.verdict else None,
            "cost_usd": round(self.cost(), 6),
            "provisioning_s": round((self.job_started or end) - self.created_at, 3),
            "running_s": round(end - self.job_started, 3) if self.job_started else 0.0,
        }
