"""`launch()`: a JobSpec to a watched Vast.ai job, and the JobHandle pipelines hold.

Before any money is spent: the spec is validated, a committed job is reported "already done",
the dataset is pre-flighted, an optional CPU dry run trains a few steps locally, and the
offers are searched and priced. Then the resolved spec is uploaded, the launcher heartbeat
written, job credentials minted, and an instance rented, unless one labelled for the job is
already live: then the launch attaches to it instead. `JobHandle.wait()` watches (see watch),
rents the next offer after infrastructure failures (at most `limits.max_attempts`
instances), and always destroys what this launch rented, plus an attached instance once its
job ends. Ctrl-C destroys too, except with `detach` once the job has started.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import (
    Cancelled,
    DataError,
    InfraError,
    JobFailed,
    LimitExceeded,
    NoOfferError,
    PreconditionFailed,
    ProvisioningError,
    SpecError,
    TrainerError,
)
from trainer.launcher.credentials import Mode
from trainer.launcher.events import Reporter, Secrets
from trainer.launcher.records import JobConflict
from trainer.launcher.session import open_session
from trainer.launcher.vast import VastClient
from trainer.spec import JobSpec, load_spec
from trainer.storage.base import ObjectStore

if TYPE_CHECKING:
    from trainer.launcher.fleet import SharedBudget
    from trainer.launcher.run import Run

__all__ = ["JobConflict", "JobHandle", "LaunchOptions", "LaunchResult", "launch", "outcome_of"]

log = logging.getLogger("quantlab.launcher")


@dataclass(frozen=True)
class LaunchOptions:
    """How to launch; the spec says what."""

    dry_run: bool = False
    """Everything up to renting (validation, pre-flight, local dry run, offers, estimate)."""
    local_dry_run: bool = False
    """Train a few steps on this computer's CPU before renting (always on with dry_run)."""
    detach: bool = False
    """Return once the job runs; the container's own limits and self-destroy take over."""
    poll_s: float = 10.0
    """Seconds between status polls."""
    logs_every_s: float = 30.0
    """Seconds between container log snapshots."""
    container_env: Mapping[str, str] = field(default_factory=dict)
    """Extra container settings, e.g. QUANTLAB_STATUS_EVERY_SEC (see payload.OPTIONAL_ENV)."""
    credentials: Mode = "auto"
    """AWS credentials for the job: auto, scoped or passthrough (see credentials)."""
    role_arn: str | None = None
    """Role to assume for scoped credentials; default QUANTLAB_JOB_ROLE_ARN."""
    bad_hosts_file: Path | None = None
    """Where bad hosts are remembered across launches; None keeps them for this launch."""
    shown_offers: int = 5
    """Candidates listed before renting."""


OUTCOMES: tuple[tuple[type[TrainerError], str], ...] = (
    (SpecError, "invalid_spec"),
    (DataError, "data_error"),
    (NoOfferError, "no_offer"),
    (ProvisioningError, "provisioning_failed"),
    (JobFailed, "failed"),
    (LimitExceeded, "limit_exceeded"),
    (Cancelled, "cancelled"),
    (PreconditionFailed, "conflict"),
    (InfraError, "infra_error"),
)
"""The result's `outcome` for each error; success outcomes are succeeded, already_done,
dry_run and detached."""


def outcome_of(exc: TrainerError) -> str:
    return next((name for kind, name in OUTCOMES if isinstance(exc, kind)), "error")


@dataclass
class LaunchResult:
    """The final report: the `result` event and the CLI's last stdout line."""

    job_id: str
    outcome: str
    exit_code: int
    reason: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    cost_usd: float = 0.0
    estimate_usd: float | None = None
    durations: dict[str, float] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    """Per replacement of an interrupted instance: interruption seen → first training
    progress on the new instance."""
    promotion: dict[str, Any] | None = None
    """With `promotion.auto`: whether the model was promoted, and why not."""

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "artifacts": self.artifacts,
            "cost_usd": round(self.cost_usd, 6),
            "estimate_usd": None if self.estimate_usd is None else round(self.estimate_usd, 4),
            "durations": self.durations,
            "attempts": self.attempts,
            "recovery_s": self.recovery_s,
            "promotion": self.promotion,
        }


def launch(
    spec: JobSpec | str | Path,
    *,
    options: LaunchOptions | None = None,
    store: ObjectStore | str | None = None,
    vast: VastClient | None = None,
    vast_url: str | None = None,
    vast_key_file: str | Path | None = None,
    reporter: Reporter | None = None,
    client_options: Mapping[str, Any] | None = None,
    budget: SharedBudget | None = None,
) -> JobHandle:
    """Check, price and start a job (see the module docstring) and return its handle; the
    typed error (SpecError, DataError, NoOfferError, JobConflict, InfraError, ...) when it
    cannot start. `spec`: a JobSpec or a YAML path. `store`: an ObjectStore or a root
    (default $QUANTLAB_STORE, else s3://). `vast`: a ready VastClient, else one from
    `vast_key_file` or $VAST_API_KEY and `vast_url` or $VAST_URL (pass `vast_url` with a
    custom client too: the container gets it). `reporter`: where events and human lines go
    (default: kept in `handle.events` only). `budget`: shared with other launches."""
    from trainer.launcher.run import Run

    options = options or LaunchOptions()
    secrets = reporter.secrets if reporter else Secrets()
    if not isinstance(spec, JobSpec):
        spec = load_spec(spec)
    reporter = reporter.for_job(spec.job_id) if reporter else Reporter(spec.job_id, secrets=secrets)
    session = open_session(
        store=store,
        vast=vast,
        key_file=vast_key_file,
        url=vast_url,
        secrets=secrets,
        client_options=client_options,
        read_only_buckets=(spec.storage.raw_bucket,),
    )
    run = Run(spec, session, options, reporter)
    if budget is not None:
        budget.add(run)
        run.shared_budget = budget.check
    run.prepare()
    return JobHandle(run)


class JobHandle:
    """A launched job. `wait()` watches it to the end; `status()`, `logs()` and `stop()` work
    from any thread. As a context manager, a block that raises stops the job."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self.spec, self.job_id = run.spec, run.job_id
        self._bucket = run.spec.storage.artifacts_bucket
        self._lock = threading.Lock()

    @property
    def result(self) -> LaunchResult | None:
        """Set once the launch ended, whichever way."""
        return self._run.result

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event so far, as the NDJSON stream carries them."""
        return list(self._run.reporter.events)

    def wait(self) -> LaunchResult:
        """Watch until the job ends: its result, or the typed error of the outcome (with
        `result` set either way). Nothing this launch rented is left running."""
        with self._lock:
            return self._run.wait()

    def status(self) -> dict[str, Any]:
        from trainer.launcher.commands import job_status

        return job_status(self._run.session, self._bucket, self.job_id)

    def logs(self, tail: int = 200) -> list[str]:
        from trainer.launcher.commands import job_logs

        return job_logs(self._run.session, self._bucket, self.job_id, tail)

    def interrupt(self) -> None:
        """End the watch as Ctrl-C would: `wait()` raises Cancelled after destroying what
        this launch rented (an instance it attached to keeps running)."""
        self._run.request_stop()

    def stop(self) -> None:
        """End the job now: the watch stops and every instance of the job is destroyed."""
        from trainer.launcher.commands import stop_job

        self._run.request_stop()
        stop_job(self._run.session, self._bucket, self.job_id, self._run.reporter)

    def __enter__(self) -> JobHandle:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if exc is not None and (self.result is None or self.result.outcome == "detached"):
            self.stop()


def local_dry_run(spec: JobSpec, store: ObjectStore) -> dict[str, Any] | None:
    """A few training steps on this CPU; None when torch is not installed here."""
    try:
        import torch  # noqa: F401
    except ImportError:
        log.warning("skipping the local dry run: torch is not installed (pip install '.[train]')")
        return None
    from trainer.job import run_job

    result = run_job(spec, store, device="cpu", dry_run=True)
    return {"steps": result.metrics.get("steps"), "artifacts": result.artifacts}
