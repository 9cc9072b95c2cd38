"""Offers of the fake Vast.ai server: a seeded catalogue and the `POST /bundles/` search rules."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin")
CONTROL_KEYS = frozenset({"order", "type", "limit", "allocated_storage", "disable_bundling"})
OFFER_TYPES = {
    "on-demand": "on-demand",
    "ondemand": "on-demand",
    "bid": "bid",
}
HOURS_PER_MONTH = 30 * 24
DEFAULT_LIMIT = 64

# Per-model hardware figures used when building a realistic offer.
GPU_SPECS: dict[str, dict[str, Any]] = {
    "RTX 3090": {"gpu_ram": 24576, "compute_cap": 860, "cuda_max_good": 12.2, "dlperf": 22.1},
    "RTX 4090": {"gpu_ram": 24564, "compute_cap": 890, "cuda_max_good": 12.4, "dlperf": 38.5},
    "A100 SXM4": {"gpu_ram": 81920, "compute_cap": 800, "cuda_max_good": 12.4, "dlperf": 61.0},
    "H100 SXM": {"gpu_ram": 81559, "compute_cap": 900, "cuda_max_good": 12.6, "dlperf": 120.0},
}


class SearchError(ValueError):
    """The search body is malformed; the message is what the server puts in `msg`."""


def make_offer(
    offer_id: int, gpu_name: str, num_gpus: int = 1, dph_base: float = 0.4, **overrides: Any
) -> dict[str, Any]:
    """One offer row with every field a client reads; `overrides` replace any of them."""
    spec = GPU_SPECS.get(
        gpu_name, {"gpu_ram": 16384, "compute_cap": 750, "cuda_max_good": 12.0, "dlperf": 10.0}
    )
    machine_id = 40_000 + offer_id % 10_000
    offer: dict[str, Any] = {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": offer_id,
        "machine_id": machine_id,
        "host_id": 900 + offer_id % 97,
        "num_gpus": num_gpus,
        "gpu_name": gpu_name,
        "gpu_ram": spec["gpu_ram"],
        "gpu_total_ram": spec["gpu_ram"] * num_gpus,
        "compute_cap": spec["compute_cap"],
        "cuda_max_good": spec["cuda_max_good"],
        "driver_version": "550.54.15",
        "cpu_ram": 64_000 * num_gpus,
        "cpu_cores_effective": 8.0 * num_gpus,
        "disk_space": 500.0,
        "inet_up": 800.0,
        "inet_down": 900.0,
        "direct_port_count": 100,
        "dph_base": dph_base,
        "dph_total": dph_base,
        "min_bid": round(dph_base * 0.45, 4),
        "storage_cost": 0.15,
        "storage_total_cost": 0.0,
        "dlperf": spec["dlperf"] * num_gpus,
        "dlperf_per_dphtotal": 0.0,
        "score": 100.0,
        "reliability": 0.995,
        "reliability2": 0.995,
        "verification": "verified",
        "rentable": True,
        "rented": False,
        "is_bid": False,
        "external": False,
        "hosting_type": 0,
        "geolocation": "Sweden, SE",
        "public_ipaddr": f"203.0.113.{offer_id % 250 + 1}",
        "static_ip": True,
        "duration": 30 * 86400.0,
        "end_date": None,
    }
    offer.update(overrides)
    return offer


def default_offers() -> list[dict[str, Any]]:
    """A small market: several GPU models, prices, regions, one unverified and one rented host."""
    return [
        make_offer(7_100_001, "RTX 4090", dph_base=0.42, reliability2=0.998, score=180.0),
        make_offer(
            7_100_002,
            "RTX 4090",
            dph_base=0.35,
            reliability2=0.97,
            score=150.0,
            geolocation="Texas, US",
            inet_down=450.0,
            storage_cost=0.2,
        ),
        make_offer(
            7_100_003,
            "RTX 4090",
            dph_base=0.29,
            reliability2=0.91,
            score=90.0,
            verification="unverified",
            geolocation="Quebec, CA",
        ),
        make_offer(
            7_100_004,
            "RTX 4090",
            num_gpus=2,
            dph_base=0.80,
            score=170.0,
            geolocation="Germany, DE",
            hosting_type=1,
        ),
        make_offer(
            7_100_005,
            "RTX 3090",
            dph_base=0.21,
            reliability2=0.985,
            score=120.0,
            geolocation="Poland, PL",
            cuda_max_good=12.2,
        ),
        make_offer(
            7_100_006,
            "RTX 3090",
            dph_base=0.18,
            reliability2=0.96,
            score=100.0,
            geolocation="Texas, US",
            inet_down=250.0,
        ),
        make_offer(
            7_100_007,
            "A100 SXM4",
            dph_base=1.10,
            reliability2=0.999,
            score=260.0,
            geolocation="Oregon, US",
            hosting_type=1,
            storage_cost=0.25,
        ),
        make_offer(
            7_100_008,
            "A100 SXM4",
            num_gpus=8,
            dph_base=8.40,
            score=300.0,
            geolocation="Oregon, US",
            hosting_type=1,
        ),
        make_offer(
            7_100_009,
            "H100 SXM",
            dph_base=2.20,
            reliability2=0.999,
            score=320.0,
            geolocation="Finland, FI",
            hosting_type=1,
            storage_cost=0.3,
        ),
        make_offer(
            7_100_010,
            "H100 SXM",
            num_gpus=8,
            dph_base=17.0,
            score=400.0,
            geolocation="Finland, FI",
            hosting_type=1,
        ),
        make_offer(
            7_100_011,
            "RTX 4090",
            dph_base=0.31,
            reliability2=0.99,
            score=160.0,
            rentable=False,
            rented=True,
            geolocation="Norway, NO",
        ),
        make_offer(
            7_100_012,
            "RTX 4090",
            dph_base=0.33,
            reliability2=0.99,
            score=140.0,
            external=True,
            geolocation="Spain, ES",
        ),
    ]


def price_offer(offer: Mapping[str, Any], offer_type: str, storage_gb: float) -> dict[str, Any]:
    """A copy of `offer` priced for `offer_type` with `storage_gb` of disk included in dph_total."""
    priced = dict(offer)
    storage_per_hour = float(offer.get("storage_cost") or 0.0) * storage_gb / HOURS_PER_MONTH
    compute = float(offer["min_bid"] if offer_type == "bid" else offer["dph_base"])
    priced["dph_total"] = round(compute + storage_per_hour, 6)
    priced["storage_total_cost"] = round(storage_per_hour, 6)
    priced["is_bid"] = offer_type == "bid"
    dlperf = float(offer.get("dlperf") or 0.0)
    priced["dlperf_per_dphtotal"] = round(dlperf / priced["dph_total"], 4) if dlperf else 0.0
    return priced


def field_value(row: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """(known, value) of a filterable column; `verified` is derived from `verification`."""
    if name == "verified" and "verification" in row:
        return True, row["verification"] == "verified"
    if name not in row:
        return False, None
    return True, row[name]


def _coerce(operand: Any, like: Any, column: str) -> Any:
    """Turn a filter operand (often a string, see parse_query) into the column's type."""
    if isinstance(like, bool):
        if isinstance(operand, str):
            return operand.strip().lower() in ("true", "1", "yes")
        return bool(operand)
    if isinstance(like, int | float):
        if isinstance(operand, bool):
            return float(operand)
        try:
            number = float(operand)
        except (TypeError, ValueError):
            return math.nan
        return number
    if isinstance(operand, str) and column == "gpu_name":
        return operand.replace("_", " ")
    return operand


def _same(value: Any, operand: Any, column: str) -> bool:
    if column == "geolocation" and isinstance(value, str) and isinstance(operand, str):
        return operand in (value, value[-2:])
    if isinstance(value, str) and isinstance(operand, str):
        return value.lower() == operand.lower()
    return bool(value == operand)


def matches(value: Any, op: str, operand: Any, column: str) -> bool:
    """Whether a column value satisfies `{op: operand}`."""
    if op not in OPERATORS:
        raise SearchError(f"unknown operator {op!r} on {column}")
    if op in ("in", "notin"):
        items = operand if isinstance(operand, list | tuple) else [operand]
        found = any(_same(value, _coerce(item, value, column), column) for item in items)
        return found if op == "in" else not found
    if value is None or operand is None:
        same = value is None and operand is None
        return same if op == "eq" else (not same if op == "neq" else False)
    target = _coerce(operand, value, column)
    if op == "eq":
        return _same(value, target, column)
    if op == "neq":
        return not _same(value, target, column)
    try:
        if op == "gt":
            return bool(value > target)
        if op == "gte":
            return bool(value >= target)
        if op == "lt":
            return bool(value < target)
        return bool(value <= target)
    except TypeError:
        return False


def row_matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether `row` passes every filter; filters on columns the row lacks are ignored."""
    for column, condition in filters.items():
        known, value = field_value(row, column)
        if not known:
            continue
        ops = condition if isinstance(condition, Mapping) else {"eq": condition}
        if not all(matches(value, op, operand, column) for op, operand in ops.items()):
            return False
    return True


def sort_rows(rows: list[dict[str, Any]], order: Iterable[Sequence[str]]) -> list[dict[str, Any]]:
    """Stable multi-key sort; rows missing a key (or holding null) go last either way."""
    result = list(rows)
    for column, direction in reversed([tuple(pair) for pair in order]):
        desc = direction == "desc"
        present = [r for r in result if r.get(column) is not None]
        absent = [r for r in result if r.get(column) is None]
        present.sort(key=operator.itemgetter(column), reverse=desc)
        result = present + absent
    return result


def _order_pairs(order: Any) -> list[tuple[str, str]]:
    if not isinstance(order, list):
        raise SearchError("order must be a list of [field, direction] pairs")
    pairs = []
    for pair in order:
        if not (isinstance(pair, list) and len(pair) == 2 and pair[1] in ("asc", "desc")):
            raise SearchError(f"bad order entry {pair!r}; expected [field, 'asc'|'desc']")
        pairs.append((str(pair[0]), str(pair[1])))
    return pairs


def search(offers: Iterable[Mapping[str, Any]], query: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The offers a `POST /bundles/` body selects, priced, ordered and limited."""
    offer_type = OFFER_TYPES.get(str(query.get("type", "on-demand")))
    if offer_type is None:
        raise SearchError(f"type must be one of {sorted(OFFER_TYPES)}, got {query.get('type')!r}")
    try:
        storage_gb = float(query.get("allocated_storage", 5.0))
        limit = int(query.get("limit") or DEFAULT_LIMIT)
    except (TypeError, ValueError) as exc:
        raise SearchError(f"allocated_storage and limit must be numbers ({exc})") from None
    order = _order_pairs(query.get("order", [["score", "desc"]]))
    filters = {k: v for k, v in query.items() if k not in CONTROL_KEYS}
    priced = [price_offer(o, offer_type, storage_gb) for o in offers]
    selected = [o for o in priced if row_matches(o, filters)]
    return sort_rows(selected, order)[: max(limit, 0)]
