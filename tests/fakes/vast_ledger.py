"""Billing of the fake Vast.ai account: GPU time while running, storage from create to destroy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vast_state import Instance


@dataclass(frozen=True)
class LedgerEntry:
    """What one instance has cost so far."""

    instance_id: int
    gpu_seconds: float
    storage_seconds: float
    gpu_cost: float
    storage_cost: float
    destroyed: bool

    @property
    def total_cost(self) -> float:
        return self.gpu_cost + self.storage_cost


@dataclass(frozen=True)
class Ledger:
    """The account's bill: one entry per instance ever created."""

    entries: dict[int, LedgerEntry]

    @property
    def total_cost(self) -> float:
        return sum(e.total_cost for e in self.entries.values())

    @property
    def gpu_seconds(self) -> float:
        return sum(e.gpu_seconds for e in self.entries.values())

    @property
    def still_billing(self) -> list[int]:
        """Ids of instances that were never destroyed (storage keeps accruing)."""
        return sorted(i for i, e in self.entries.items() if not e.destroyed)


def ledger_entry(instance: Instance, now: float) -> LedgerEntry:
    gpu_s, storage_s = instance.meters(now)
    return LedgerEntry(
        instance_id=instance.id,
        gpu_seconds=gpu_s,
        storage_seconds=storage_s,
        gpu_cost=gpu_s / 3600 * instance.gpu_rate(),
        storage_cost=storage_s / 3600 * instance.storage_rate(),
        destroyed=instance.destroyed_at is not None,
    )
