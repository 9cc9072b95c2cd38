"""The create request, pure: image, disk, label, entrypoint and the container's environment.

The container runs in Vast.ai's `args` mode: `onstart` is the image's entrypoint executable
(`/usr/local/bin/quantlab-entrypoint`, see docker/Dockerfile) and the job reads everything else
from the environment documented in `trainer/container/env.py`. Instances are labelled
`quantlab:<jobId>`; `list` and `reap` touch no instance without that prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trainer.container.env import DEFAULT_VAST_URL
from trainer.errors import SpecError
from trainer.launcher.offers import Candidate
from trainer.spec.sections import JobSpec

ENTRYPOINT = "/usr/local/bin/quantlab-entrypoint"
LABEL_PREFIX = "quantlab:"
AWS_PASSTHROUGH = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
"""Launcher variables the container gets as they are, when set: where S3 is, which region."""
AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
OPTIONAL_ENV = frozenset({"QUANTLAB_STATUS_EVERY_SEC", "QUANTLAB_DEVICE"})
"""Container settings a launch may add (`--env`); the rest of the contract is set here.
(QUANTLAB_DRY_RUN is not one: a job that commits nothing would look lost to the watch.)"""


def label_for(job_id: str) -> str:
    return f"{LABEL_PREFIX}{job_id}"


def job_of(label: str | None) -> str | None:
    """The job id a launcher label names, None for any other label."""
    if not label or not label.startswith(LABEL_PREFIX):
        return None
    return label.removeprefix(LABEL_PREFIX) or None


@dataclass(frozen=True)
class CreateRequest:
    """Everything `VastClient.create_instance` needs for one offer; env stays out of repr."""

    offer_id: int
    image: str
    disk_gb: float
    label: str
    bid_price: float | None
    env: dict[str, str] = field(repr=False)
    onstart: str = ENTRYPOINT
    args: tuple[str, ...] = ()
    cancel_unavail: bool = True


def container_env(
    *,
    jobspec_uri: str,
    num_gpus: int,
    aws: Mapping[str, str],
    launcher_env: Mapping[str, str],
    store_root: str = "s3://",
    vast_url: str | None = None,
    extra: Mapping[str, str] | None = None,
    sweep_uri: str | None = None,
) -> dict[str, str]:
    """The container's environment: the job's spec URI and GPU count, the AWS credentials
    minted for the job (`aws`), the S3 endpoint and region copied from `launcher_env` when
    set, the store root and Vast.ai URL only when they differ from the container's defaults,
    and any of OPTIONAL_ENV from `extra`; for a sweep, its `sweep.yaml` as QUANTLAB_SWEEP.
    Vast.ai adds CONTAINER_ID and CONTAINER_API_KEY."""
    unknown = sorted(set(extra or {}) - OPTIONAL_ENV)
    if unknown:
        raise SpecError(
            "unsupported container setting",
            [f"{name}: --env accepts only {', '.join(sorted(OPTIONAL_ENV))}" for name in unknown],
        )
    env = {"QUANTLAB_JOBSPEC": jobspec_uri, "QUANTLAB_NUM_GPUS": str(num_gpus)}
    if sweep_uri is not None:
        env["QUANTLAB_SWEEP"] = sweep_uri
    if store_root.rstrip("/") != "s3:":
        env["QUANTLAB_STORE"] = store_root
    if vast_url and vast_url.rstrip("/") != DEFAULT_VAST_URL:
        env["QUANTLAB_VAST_URL"] = vast_url.rstrip("/")
    env.update({k: launcher_env[k] for k in AWS_PASSTHROUGH if launcher_env.get(k)})
    env.update({k: aws[k] for k in AWS_CREDENTIALS if aws.get(k)})
    env.update(extra or {})
    return env


def create_request(spec: JobSpec, candidate: Candidate, env: Mapping[str, str]) -> CreateRequest:
    """The rental of `candidate` for this job; `cancel_unavail` so an offer that cannot start
    now fails the create instead of leaving a stopped instance that bills storage."""
    return CreateRequest(
        offer_id=candidate.offer.id,
        image=spec.resources.image,
        disk_gb=spec.resources.disk_gb,
        label=label_for(spec.job_id),
        bid_price=candidate.bid,
        env=dict(env),
    )
