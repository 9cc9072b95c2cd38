"""The AWS credentials handed to a job: short-lived and scoped to its prefixes where STS allows.

A rented host is somebody else's machine, so the container should hold as little as possible:

- `scoped` (tried first): STS mints temporary credentials whose policy allows reading only the
  job's feature partitions and reading/writing only `ml-artifacts/<jobId>/`. With a role
  (`QUANTLAB_JOB_ROLE_ARN` or `role_arn=`) through AssumeRole, otherwise through
  GetFederationToken, which needs long-term IAM user keys. They expire after the job's
  provisioning and runtime limits plus a margin. Listing key names in the two buckets stays
  allowed: without `s3:ListBucket`, S3 answers 403 instead of 404 for a missing object.
- `passthrough`: the launcher's own credentials, as the AWS credential chain resolves them,
  copied into the container. Anyone with access to the host could read them, so this is a
  warning every time. `auto` falls back to it when STS is unavailable (S3-compatible stores
  without STS, temporary launcher credentials without a role).

STS is reached like every AWS service: `AWS_ENDPOINT_URL_STS` or `AWS_ENDPOINT_URL` redirect it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.errors import InfraError
from trainer.spec.sections import JobSpec
from trainer.store.layout import ARTIFACTS_ROOT, FEATURES_ROOT

log = logging.getLogger("quantlab.launcher")

Mode = Literal["auto", "scoped", "passthrough"]
MARGIN_S = 30 * 60
MIN_TOKEN_S, MAX_FEDERATION_S, MAX_ROLE_S = 900, 129_600, 43_200
MAX_POLICY_CHARS = 2_000  # STS refuses session policies above 2,048 packed characters
ROLE_ENV = "QUANTLAB_JOB_ROLE_ARN"


@dataclass(frozen=True)
class JobCredentials:
    """AWS variables for the container; values never appear in repr."""

    env: dict[str, str] = field(repr=False)
    mode: Literal["scoped", "passthrough"]
    expires_at: float | None
    """Epoch seconds; None for long-term credentials."""
    note: str

    def secrets(self) -> list[str]:
        return [v for k, v in self.env.items() if k != "AWS_ACCESS_KEY_ID"]


def token_seconds(spec: JobSpec) -> int:
    limits = spec.limits
    wanted = (limits.provision_timeout_minutes + limits.max_runtime_minutes) * 60 + MARGIN_S
    return max(MIN_TOKEN_S, int(wanted))


def scope_policy(spec: JobSpec, job_id: str) -> dict[str, Any]:
    """Read the job's feature partitions, read/write its artifacts prefix, list both buckets."""
    data, buckets = spec.data, spec.storage
    stream = f"{FEATURES_ROOT}/featureset={data.featureset}/exchange={data.exchange}/" + (
        f"stream={data.stream}/"
    )
    compact = f"arn:aws:s3:::{buckets.compact_bucket}"
    artifacts = f"arn:aws:s3:::{buckets.artifacts_bucket}"
    per_symbol = [f"{compact}/{stream}symbol={s}/*" for s in data.symbols]

    def policy(reads: list[str]) -> dict[str, Any]:
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadFeatures",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": reads,
                },
                {
                    "Sid": "JobArtifacts",
                    "Effect": "Allow",
                    "Action": [
                        "s3:GetObject",
                        "s3:PutObject",
                        "s3:DeleteObject",
                        "s3:AbortMultipartUpload",
                    ],
                    "Resource": f"{artifacts}/{ARTIFACTS_ROOT}/{job_id}/*",
                },
                {
                    "Sid": "ListForNotFound",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": [compact, artifacts],
                },
            ],
        }

    narrow = policy(per_symbol)
    if len(json.dumps(narrow, separators=(",", ":"))) <= MAX_POLICY_CHARS:
        return narrow
    return policy([f"{compact}/{stream}*"])  # too many symbols: the whole stream


def job_credentials(
    spec: JobSpec,
    *,
    mode: Mode = "auto",
    role_arn: str | None = None,
    environ: Mapping[str, str] | None = None,
    any_job: bool = False,
) -> JobCredentials:
    """Credentials for `spec`'s container, per `mode` (see the module docstring). With
    `any_job` (a sweep's instance, whose trials' ids are derived as they are sampled) the
    scoped policy writes any folder under `ml-artifacts/`, still only in the artifacts
    bucket and reading only the spec's partitions."""
    env = os.environ if environ is None else environ
    role = role_arn or env.get(ROLE_ENV) or None
    if mode != "passthrough":
        try:
            return _scoped(spec, role, any_job)
        except InfraError as exc:
            if mode == "scoped":
                raise
            log.warning("%s; falling back to the launcher's own credentials", exc)
    return _passthrough()


def _scoped(spec: JobSpec, role: str | None, any_job: bool = False) -> JobCredentials:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    job_id = spec.job_id
    policy = json.dumps(scope_policy(spec, "*" if any_job else job_id), separators=(",", ":"))
    name = re.sub(r"[^\w+=,.@-]", "-", f"quantlab-{job_id}")
    config = Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2})
    sts = boto3.client("sts", config=config)
    how = f"AssumeRole on {role}" if role else "GetFederationToken"
    try:
        if role:
            seconds = min(token_seconds(spec), MAX_ROLE_S)
            answer = sts.assume_role(
                RoleArn=role, RoleSessionName=name[:64], Policy=policy, DurationSeconds=seconds
            )
        else:
            seconds = min(token_seconds(spec), MAX_FEDERATION_S)
            answer = sts.get_federation_token(
                Name=name[:32], Policy=policy, DurationSeconds=seconds
            )
    except (BotoCoreError, ClientError) as exc:
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
        raise InfraError(
            f"cannot mint scoped job credentials with STS ({how}: {code or type(exc).__name__})"
        ) from None
    creds = answer["Credentials"]
    if seconds < token_seconds(spec):
        log.warning(
            "job credentials last %.1f h, less than the job's limits: a job running that long "
            "loses S3 access; lower limits.max_runtime_minutes or raise the role's maximum",
            seconds / 3600,
        )
    return JobCredentials(
        env={
            "AWS_ACCESS_KEY_ID": str(creds["AccessKeyId"]),
            "AWS_SECRET_ACCESS_KEY": str(creds["SecretAccessKey"]),
            "AWS_SESSION_TOKEN": str(creds["SessionToken"]),
        },
        mode="scoped",
        expires_at=time.time() + seconds,
        note=f"scoped to ml-artifacts/{'*' if any_job else job_id}/ and the job's partitions "
        f"via {how}, valid {seconds / 3600:.1f} h",
    )


def _passthrough() -> JobCredentials:
    import boto3

    found = boto3.Session().get_credentials()
    if found is None:
        raise InfraError(
            "no AWS credentials to hand to the job: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or a profile) so the container can reach the buckets"
        )
    frozen = found.get_frozen_credentials()
    env = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    log.warning(
        "the job gets the launcher's own AWS credentials: anyone with access to the rented "
        "host could read them; give the launcher IAM user keys or set %s for scoped ones",
        ROLE_ENV,
    )
    return JobCredentials(
        env=env, mode="passthrough", expires_at=None, note="the launcher's own credentials"
    )
