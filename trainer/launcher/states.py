"""Instance states: Vast.ai's status strings mapped once into the launcher's own states."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

PULL_ERRORS = ("pull access denied", "manifest unknown", "failed to pull", "error pulling image")


class InstanceState(enum.StrEnum):
    """The runner's view of an instance, whatever strings Vast.ai used to say it."""

    PENDING = "pending"
    RUNNING = "running"
    EXITED = "exited"
    STOPPED_OUTBID = "stopped_outbid"
    FAILED = "failed"
    LOST = "lost"
    GONE = "gone"


def normalize_status(row: Mapping[str, Any] | None) -> InstanceState:
    """Map one instance row (None once destroyed) to an InstanceState; unknown values pend.

    `exited`, `offline` and `unknown` never turn back into `running` (Vast.ai's docs), and
    an OCI or pull error in `status_msg` means the container will not start on this host."""
    if row is None or row.get("cur_state") == "unloaded":
        return InstanceState.GONE
    actual = row.get("actual_status")
    message = str(row.get("status_msg") or "")
    if actual in ("offline", "unknown"):
        return InstanceState.LOST
    if actual == "created" and "OCI runtime create failed" in message:
        return InstanceState.FAILED
    if actual in (None, "loading", "created") and any(p in message.lower() for p in PULL_ERRORS):
        return InstanceState.FAILED
    if row.get("cur_state") == row.get("intended_status") == row.get("next_state") == "stopped":
        return InstanceState.STOPPED_OUTBID
    if actual == "running":
        return InstanceState.RUNNING
    if actual == "exited":
        return InstanceState.EXITED
    return InstanceState.PENDING
