"""Typed errors of the runner, and the one table from error type to exit code and outcome.

Only the CLI (`trainer.cli.main`) and the launch result turn errors into codes and outcomes,
and both read `exit_code_of` / `outcome_of` below: an error class never carries its own code.
"""

from __future__ import annotations

from collections.abc import Sequence

# Documented exit codes (README, "Exit codes").
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_SPEC = 2
EXIT_DATA = 3
EXIT_NO_OFFER = 4
EXIT_PROVISIONING = 5
EXIT_JOB_FAILED = 6
EXIT_LIMIT = 7
EXIT_INFRA = 8
EXIT_CONFLICT = 9
EXIT_REFUSED = 10
EXIT_UNKNOWN_JOB = 11
EXIT_CANCELLED = 130


class TrainerError(Exception):
    """Base of every error the runner raises on purpose; the message says what to do next."""

    @property
    def headline(self) -> str:
        """The first line of the message: what a one-line summary shows."""
        text = str(self)
        return text.splitlines()[0] if text else type(self).__name__


class ProblemsError(TrainerError):
    """An error that carries several independent problems, reported together."""

    def __init__(self, headline: str, problems: Sequence[str]) -> None:
        self._headline = headline
        self.problems = list(problems)
        body = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{headline}\n{body}" if body else headline)

    @property
    def headline(self) -> str:
        return self._headline


class SpecError(ProblemsError):
    """The JobSpec is invalid; each problem starts with its YAML path."""


class UsageError(TrainerError):
    """A command-line argument is not one the command can take (a job id, a symbol)."""


class UnreachableStore(ProblemsError):
    """A launch's store is one a rented host cannot reach (a local folder, an S3 endpoint on a
    loopback or private address); the problem names the setting and the way out."""


class DataError(ProblemsError):
    """The dataset the spec names is missing or inconsistent; each problem names its partition."""


class VerificationError(TrainerError):
    """A stored artifact does not match its manifest, or a stored record does not parse; the
    message names the URI."""


class StorageError(TrainerError):
    """Object storage (S3 or the local store) failed; the message names the URI."""


class StoreUnavailable(StorageError):
    """The store cannot be used at all (no credentials, the endpoint unreachable): the same
    for every object, so it is said once, never as a problem of each partition."""


class ObjectNotFound(StorageError):
    """The object at a URI does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists, or changed since it was read."""


class ConditionalWritesIgnored(StorageError):
    """The S3 endpoint accepts `If-None-Match: *` / `If-Match` and ignores them: committing or
    promoting there could silently lose a write."""


class DatasetChanged(ProblemsError):
    """The data under a job's id is not the data the job was resolved or committed with; each
    problem names a partition and what changed."""


class JobFailed(TrainerError):
    """The training job ran and failed; a failure record says why."""


class Diverged(JobFailed):
    """The training loss stopped being a finite number: the message names the step."""


class JobBusy(TrainerError):
    """Another run holds the job's lease and is running it now; this one wrote nothing."""


class LimitExceeded(TrainerError):
    """The job hit its runtime or money limit and was stopped."""


class InfraError(TrainerError):
    """A provider (Vast.ai, S3) failed in a way the runner cannot fix by itself."""


class NoOfferError(TrainerError):
    """No Vast.ai offer satisfies the spec's resources and price cap."""


class ProvisioningError(TrainerError):
    """Instances were rented but none started the job within the provisioning budget."""


class Refused(TrainerError):
    """A deliberate no: a promotion gate, or nothing to roll back to."""


class UnknownJob(TrainerError):
    """No job by this id: nothing under `ml-artifacts/<jobId>/` and no instance labelled for it."""


class Cancelled(TrainerError):
    """The user interrupted the command; anything it rented was destroyed."""


ERRORS: dict[type[TrainerError], tuple[int, str]] = {
    SpecError: (EXIT_SPEC, "invalid_spec"),
    UsageError: (EXIT_SPEC, "invalid_spec"),
    UnreachableStore: (EXIT_SPEC, "invalid_spec"),
    DataError: (EXIT_DATA, "data_error"),
    VerificationError: (EXIT_DATA, "data_error"),
    NoOfferError: (EXIT_NO_OFFER, "no_offer"),
    ProvisioningError: (EXIT_PROVISIONING, "provisioning_failed"),
    JobFailed: (EXIT_JOB_FAILED, "failed"),
    LimitExceeded: (EXIT_LIMIT, "limit_exceeded"),
    PreconditionFailed: (EXIT_CONFLICT, "conflict"),
    DatasetChanged: (EXIT_CONFLICT, "conflict"),
    JobBusy: (EXIT_CONFLICT, "conflict"),
    StorageError: (EXIT_INFRA, "infra_error"),
    InfraError: (EXIT_INFRA, "infra_error"),
    Refused: (EXIT_REFUSED, "refused"),
    UnknownJob: (EXIT_UNKNOWN_JOB, "unknown_job"),
    Cancelled: (EXIT_CANCELLED, "cancelled"),
}
"""Error type → (exit code, outcome). The most specific class in an error's MRO decides, so a
subclass defined anywhere (a Vast.ai error is an InfraError) maps without an entry here."""


def _entry(exc: BaseException) -> tuple[int, str]:
    for kind in type(exc).__mro__:
        if kind in ERRORS:
            return ERRORS[kind]
    return (EXIT_INTERNAL, "error")


def problems_of(exc: BaseException) -> list[str]:
    """The problems an error carries, each on its own line; none for most errors."""
    return list(exc.problems) if isinstance(exc, ProblemsError) else []


def exit_code_of(exc: BaseException) -> int:
    """The documented exit code of an error; 1 (a bug) for anything the runner did not mean."""
    return _entry(exc)[0]


def outcome_of(exc: BaseException) -> str:
    """The launch result's `outcome` for an error; success outcomes are succeeded,
    already_done, dry_run and detached."""
    return _entry(exc)[1]
