"""Typed errors of the runner and the exit code each one maps to at the CLI edge."""

from __future__ import annotations

from collections.abc import Sequence

# Documented exit codes (README, "Exit codes"). Only trainer.cli turns errors into them.
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
EXIT_CANCELLED = 130


class TrainerError(Exception):
    """Base of every error the runner raises on purpose; the message says what to do next."""

    exit_code: int = EXIT_INTERNAL


class ProblemsError(TrainerError):
    """An error that carries several independent problems, reported together."""

    def __init__(self, headline: str, problems: Sequence[str]) -> None:
        self.headline = headline
        self.problems = list(problems)
        body = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{headline}\n{body}" if body else headline)


class SpecError(ProblemsError):
    """The JobSpec is invalid; each problem starts with its YAML path."""

    exit_code = EXIT_SPEC


class DataError(ProblemsError):
    """The dataset the spec names is missing or inconsistent; each problem names its partition."""

    exit_code = EXIT_DATA


class StorageError(TrainerError):
    """Object storage (S3 or the local store) failed; the message names the URI."""

    exit_code = EXIT_INFRA


class ObjectNotFound(StorageError):
    """The object at a URI does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists, or changed since it was read."""

    exit_code = EXIT_CONFLICT


class JobFailed(TrainerError):
    """The training job ran and failed; a failure record says why."""

    exit_code = EXIT_JOB_FAILED


class LimitExceeded(TrainerError):
    """The job hit its runtime or money limit and was stopped."""

    exit_code = EXIT_LIMIT


class InfraError(TrainerError):
    """A provider (Vast.ai, S3) failed in a way the runner cannot fix by itself."""

    exit_code = EXIT_INFRA


class NoOfferError(TrainerError):
    """No Vast.ai offer satisfies the spec's resources and price cap."""

    exit_code = EXIT_NO_OFFER


class ProvisioningError(TrainerError):
    """Instances were rented but none started the job within the provisioning budget."""

    exit_code = EXIT_PROVISIONING


class Refused(TrainerError):
    """A deliberate no: a promotion gate, or nothing to roll back to."""

    exit_code = EXIT_REFUSED


class Cancelled(TrainerError):
    """The user interrupted the command; anything it rented was destroyed."""

    exit_code = EXIT_CANCELLED
