"""What a launch is asked to do (`LaunchOptions`) and what it reports (`LaunchResult`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.launcher.credentials import Mode
from trainer.store.records import EvalMetrics, JobMetrics


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


@dataclass
class LaunchResult:
    """The final report: the `result` event and the CLI's last stdout line."""

    job_id: str
    outcome: str
    """succeeded, already_done, dry_run, detached, or the error's outcome (`errors.ERRORS`)."""
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
    metrics: EvalMetrics | None = None
    """The committed model's final validation metrics."""
    rows: dict[str, int] | None = None
    """Rows the committed job used: `train` (seen, every rank), `validation`, and
    `dropped_non_finite`."""
    report: str | None = None
    """The command that writes and opens the job's report page."""
    problems: list[str] = field(default_factory=list)
    """A refused launch's problems, each under its YAML path or setting (a spec, a dataset,
    an unreachable store); only in the JSON when there are some."""

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
            "metrics": self.metrics.model_dump(mode="json") if self.metrics else None,
            "rows": self.rows,
            "report": self.report,
            **({"problems": self.problems} if self.problems else {}),
        }


def rows_used(metrics: JobMetrics) -> dict[str, int]:
    return {
        "train": metrics.rows_seen_all_ranks,
        "validation": metrics.final.rows,
        "dropped_non_finite": metrics.rows_dropped_non_finite,
    }
