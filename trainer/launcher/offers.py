"""Offer selection, pure: search filters from `resources`, eligibility, ranking, bid, cost estimate.

Vast.ai filters on its side, but every constraint is checked again here on the typed offer, so
a filter the server ignores (or spells differently) cannot rent the wrong machine.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from trainer.launcher.vast import Offer
from trainer.spec.sections import LimitsSpec, ResourcesSpec

HOURS_PER_MONTH = 30 * 24
MIN_BID = 0.001
"""Vast.ai refuses bids below this many dollars per hour."""
GPU_RAM_MB_PER_GB = 1000
"""Vast.ai's query language turns GB into the API's MB by ×1000, not ×1024."""
PRICE_TOLERANCE = 0.02
"""Relative slack when comparing the price read back from an instance with the one chosen."""

OfferType = Literal["on-demand", "bid"]


@dataclass(frozen=True)
class Candidate:
    """An offer this job may rent, with the price it would pay."""

    offer: Offer
    bid: float | None
    """The bid in $/h for the machine (interruptible), None for on-demand."""
    storage_per_hour: float
    """$/h for the job's disk on this host."""

    @property
    def dph(self) -> float:
        """What the instance costs per hour, disk included."""
        if self.bid is None:
            return self.offer.dph_total
        return self.bid + self.storage_per_hour

    def describe(self) -> str:
        o = self.offer
        kind = f"bid ${self.bid:.4f}/h" if self.bid is not None else "on-demand"
        return (
            f"offer {o.id}: {o.num_gpus}× {o.gpu_name}, ${self.dph:.4f}/h ({kind}), "
            f"machine {o.machine_id}, reliability {o.reliability:.3f}, {o.geolocation or '?'}"
        )


@dataclass(frozen=True)
class Estimate:
    """The most the job can cost on one candidate if it runs to its runtime limit."""

    dph: float
    hours: float
    compute_usd: float
    storage_usd: float

    @property
    def total_usd(self) -> float:
        return self.compute_usd + self.storage_usd


def offer_type(resources: ResourcesSpec) -> OfferType:
    return "bid" if resources.interruptible else "on-demand"


def search_filters(resources: ResourcesSpec) -> dict[str, dict[str, Any]]:
    """The `{field: {op: value}}` query for `POST /bundles/` (the client adds rentable and
    rented defaults). The price cap applies to `dph_total`, which includes the disk."""
    filters: dict[str, dict[str, Any]] = {
        "gpu_name": {"in": list(resources.gpu_names)},
        "num_gpus": {"eq": resources.num_gpus},
        "gpu_ram": {"gte": resources.min_gpu_ram_gb * GPU_RAM_MB_PER_GB},
        "cuda_max_good": {"gte": resources.min_cuda},
        "disk_space": {"gte": resources.disk_gb},
        "reliability": {"gte": resources.min_reliability},
        "inet_down": {"gte": resources.min_download_mbps},
        "dph_total": {"lte": resources.max_price_per_hour},
    }
    # vastai adds `verified: true` by default; `in` both values lifts it.
    filters["verified"] = {"eq": True} if resources.verified_only else {"in": [True, False]}
    return filters


def storage_per_hour(offer: Offer, disk_gb: float) -> float:
    return offer.storage_cost * disk_gb / HOURS_PER_MONTH


def bid_for(offer: Offer, resources: ResourcesSpec) -> float | None:
    """The bid for an interruptible rental: `min_bid × bid_markup`, at least a tenth of a cent
    above `min_bid`, lowered to fit the price cap; None when even `min_bid` does not fit."""
    storage = storage_per_hour(offer, resources.disk_gb)
    wanted = max(offer.min_bid * resources.bid_markup, offer.min_bid + MIN_BID, MIN_BID)
    bid = math.ceil(wanted * 10_000) / 10_000
    room = math.floor((resources.max_price_per_hour - storage) * 10_000) / 10_000
    bid = min(bid, room)
    return bid if bid >= max(offer.min_bid, MIN_BID) else None


def why_ineligible(offer: Offer, resources: ResourcesSpec) -> str | None:
    """The first constraint of `resources` this offer breaks, or None."""
    checks = (
        (offer.gpu_name in resources.gpu_names, f"GPU {offer.gpu_name} not in gpu_names"),
        (offer.num_gpus == resources.num_gpus, f"{offer.num_gpus} GPUs"),
        (
            offer.gpu_ram_mb >= resources.min_gpu_ram_gb * GPU_RAM_MB_PER_GB,
            f"{offer.gpu_ram_mb} MB GPU memory",
        ),
        (offer.cuda_max_good >= resources.min_cuda, f"CUDA {offer.cuda_max_good}"),
        (offer.reliability >= resources.min_reliability, f"reliability {offer.reliability}"),
        (offer.verified or not resources.verified_only, "host not verified"),
        (offer.inet_down >= resources.min_download_mbps, f"{offer.inet_down} Mbit/s down"),
    )
    return next((why for ok, why in checks if not ok), None)


def candidates(
    offers: Iterable[Offer],
    resources: ResourcesSpec,
    bad_machines: Collection[int] = (),
    skip_offers: Collection[int] = (),
) -> list[Candidate]:
    """Eligible offers, cheapest first (then most reliable), bad hosts and tried offers left
    out, priced for this job's disk and rental type."""
    found: list[Candidate] = []
    for offer in offers:
        if offer.id in skip_offers or offer.machine_id in bad_machines:
            continue
        if why_ineligible(offer, resources) is not None:
            continue
        storage = storage_per_hour(offer, resources.disk_gb)
        bid = bid_for(offer, resources) if resources.interruptible else None
        if resources.interruptible and bid is None:
            continue
        candidate = Candidate(offer, bid, storage)
        if candidate.dph <= resources.max_price_per_hour:
            found.append(candidate)
    return sorted(found, key=lambda c: (c.dph, -c.offer.reliability, c.offer.id))


def estimate(candidate: Candidate, limits: LimitsSpec) -> Estimate:
    """Price × (provisioning + runtime limit) for compute, the disk over the same hours; the
    money limit caps it all (the launcher destroys the instance there)."""
    hours = (limits.provision_timeout_minutes + limits.max_runtime_minutes) / 60
    storage = candidate.storage_per_hour * hours
    compute = (candidate.dph - candidate.storage_per_hour) * hours
    return Estimate(candidate.dph, hours, compute, storage)


def price_mismatch(candidate: Candidate, dph_total: float, is_bid: bool) -> str | None:
    """Why an instance read back after create is not what was rented, or None when it is.

    A bid left out of the create is rented on-demand without any error, and a host can
    change its price between search and create: both are caught here."""
    want_bid = candidate.bid is not None
    if is_bid != want_bid:
        got, wanted = ("interruptible", "on-demand") if is_bid else ("on-demand", "interruptible")
        return f"rented {got} instead of {wanted}"
    if dph_total > candidate.dph * (1 + PRICE_TOLERANCE) + 0.001:
        return f"costs ${dph_total:.4f}/h, the offer said ${candidate.dph:.4f}/h"
    return None
