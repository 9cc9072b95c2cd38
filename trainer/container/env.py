"""The environment contract of the training container: everything a job needs, nothing else."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from trainer.errors import SpecError

DEFAULT_VAST_URL = "https://console.vast.ai"


@dataclass(frozen=True)
class ContainerEnv:
    jobspec_uri: str
    """`QUANTLAB_JOBSPEC`: where the resolved JobSpec is, normally
    `s3://quantlab-artifacts/ml-artifacts/<jobId>/jobspec.yaml` (or `file://…`)."""
    store_root: str
    """`QUANTLAB_STORE`: `s3://` (default) or `file://DIR`."""
    dry_run: bool
    """`QUANTLAB_DRY_RUN=1`: the tiny-slice path, nothing committed."""
    container_id: str | None
    """`CONTAINER_ID`, injected by Vast.ai: this instance's id."""
    container_api_key: str | None
    """`CONTAINER_API_KEY`, injected by Vast.ai: may only start/stop/destroy this instance."""
    vast_url: str
    """`QUANTLAB_VAST_URL`: the Vast.ai API base. Default: https://console.vast.ai."""
    status_every_s: float
    """`QUANTLAB_STATUS_EVERY_SEC`: heartbeat period of `status.json` and the log. Default 30."""
    device: str
    """`QUANTLAB_DEVICE`: auto (default), cpu or cuda."""
    sweep_uri: str | None = None
    """`QUANTLAB_SWEEP`: a sweep's resolved `sweep.yaml`; the container then runs its trials
    (the JobSpec at QUANTLAB_JOBSPEC gives the instance's limits and buckets)."""

    @property
    def can_self_destroy(self) -> bool:
        return bool(self.container_id and self.container_api_key)


def read_env(environ: Mapping[str, str] | None = None) -> ContainerEnv:
    env = os.environ if environ is None else environ
    problems = []
    spec = env.get("QUANTLAB_JOBSPEC", "")
    if not spec:
        problems.append(
            "QUANTLAB_JOBSPEC: required (e.g. s3://quantlab-artifacts/ml-artifacts/"
            "<jobId>/jobspec.yaml)"
        )
    try:
        every = float(env.get("QUANTLAB_STATUS_EVERY_SEC", "30"))
        if every <= 0:
            raise ValueError
    except ValueError:
        problems.append("QUANTLAB_STATUS_EVERY_SEC: must be a positive number of seconds")
        every = 30.0
    device = env.get("QUANTLAB_DEVICE", "auto")
    if device not in {"auto", "cpu", "cuda"}:
        problems.append(f"QUANTLAB_DEVICE: must be auto, cpu or cuda, not {device!r}")
    if problems:
        raise SpecError("the container environment is incomplete", problems)
    return ContainerEnv(
        jobspec_uri=spec,
        store_root=env.get("QUANTLAB_STORE") or "s3://",
        dry_run=env.get("QUANTLAB_DRY_RUN", "").lower() in {"1", "true", "yes"},
        container_id=env.get("CONTAINER_ID") or None,
        container_api_key=env.get("CONTAINER_API_KEY") or None,
        vast_url=(env.get("QUANTLAB_VAST_URL") or DEFAULT_VAST_URL).rstrip("/"),
        status_every_s=every,
        device=device,
        sweep_uri=env.get("QUANTLAB_SWEEP") or None,
    )
