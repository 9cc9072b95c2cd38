"""The promotion gate and the choice of symbol: pure rules over plain values."""

from __future__ import annotations

import math
from typing import Protocol

from trainer.errors import Refused
from trainer.promotion.production import SymbolError
from trainer.store.layout import check_symbol
from trainer.store.records import EvalMetrics, ProductionManifest


class GateRule(Protocol):
    """What the gate reads; the JobSpec's `promotion` section is one."""

    @property
    def max_ic_drop(self) -> float: ...

    @property
    def min_ic(self) -> float | None: ...


class GateRefused(Refused):
    """The candidate's validation metrics do not pass the promotion gate."""


FORCE_HINT = ". Use --force to promote anyway"


def resolve_symbol(requested: str | None, job_symbols: tuple[str, ...], job_id: str) -> str:
    """The job's only symbol by default; with several, the caller must pick one of them."""
    if requested is None:
        if len(job_symbols) == 1:
            return job_symbols[0]
        raise SymbolError(
            f"job {job_id} trained on {len(job_symbols)} symbols {list(job_symbols)}: "
            "choose one with --symbol"
        )
    try:
        check_symbol(requested)
    except ValueError as exc:
        raise SymbolError(f"{exc}, e.g. btcusdt") from None
    if requested not in job_symbols:
        raise SymbolError(
            f"job {job_id} did not train on {requested!r}; it trained on {list(job_symbols)}"
        )
    return requested


def check_gate(
    job_id: str, metrics: EvalMetrics, live: ProductionManifest | None, rule: GateRule
) -> str:
    """Raise GateRefused, naming both metrics, unless job `job_id` with validation `metrics`
    may replace the `live` version. Returns how the gate decided, for the production
    manifest."""
    ic = metrics.ic
    ours = f"candidate {job_id} validation IC {ic:.4f}"
    live_ic = _ic(live)
    theirs = (
        "no production model"
        if live is None
        else f"production v{live.version} ({live.source_job or 'no job'}) "
        + (f"validation IC {live_ic:.4f}" if live_ic is not None else "with no recorded IC")
    )
    if not math.isfinite(ic):
        raise GateRefused(f"gate refused: {ours} is not a number; {theirs}")
    if rule.min_ic is not None and ic < rule.min_ic:
        raise GateRefused(
            f"gate refused: {ours} is below min_ic {rule.min_ic:.4f}; {theirs}{FORCE_HINT}"
        )
    if live_ic is not None and ic < live_ic - rule.max_ic_drop:
        raise GateRefused(
            f"gate refused: {ours} is more than max_ic_drop {rule.max_ic_drop:.4f} below "
            f"{theirs}{FORCE_HINT}"
        )
    return f"passed: {ours} against {theirs}"


def _ic(manifest: ProductionManifest | None) -> float | None:
    if manifest is None or manifest.metrics is None:
        return None
    return manifest.metrics.ic if math.isfinite(manifest.metrics.ic) else None
