"""Promotion of a committed job to production, rollback, and the automatic pipeline step.

A candidate is checked before anything is written (see `candidate`): every artifact against
the job manifest, `model.bin` re-run on `val_sample.parquet`, the symbol taken from the job's
own spec. The gate then compares the candidate's validation metrics with those of the version
read from production, and the commit is a conditional write against that same version (see
`production`), so the gate never judges against one version while the commit replaces
another.
"""

from __future__ import annotations

import getpass
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from trainer import __version__
from trainer.errors import Refused, TrainerError, exit_code_of
from trainer.model.export import load_model
from trainer.promotion.candidate import (
    LOAD_LOCK,
    CandidateInvalid,
    PromotionCandidate,
    load_candidate,
)
from trainer.promotion.gate import FORCE_HINT, GateRefused, GateRule, check_gate, resolve_symbol
from trainer.promotion.production import (
    Live,
    production_paths,
    publish,
    read_history,
    read_live,
    sha256_bytes,
    sync_seed_copy,
)
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout, ProductionPaths
from trainer.store.records import (
    GateRuleDoc,
    ProductionManifest,
    ProductionModel,
    SampleCheck,
    utc_now,
)


class AutoRule(GateRule, Protocol):
    """The JobSpec's `promotion` section as the pipeline step reads it."""

    @property
    def auto(self) -> bool: ...


class NothingToRollBack(Refused):
    """Production has no earlier version to restore."""


@dataclass(frozen=True)
class PromotionResult:
    symbol: str
    action: str
    """`promote` or `rollback`."""
    outcome: Literal["promoted", "rolled_back", "already_live"]
    """`already_live`: nothing written."""
    version: int
    previous_version: int | None
    source_job: str | None
    forced: bool
    gate: str
    manifest_uri: str
    model_uri: str
    seed_copy_current: bool
    manifest: ProductionManifest

    def to_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in self.__dict__.items() if k != "manifest"}
        return fields | {"manifest": self.manifest.model_dump(mode="json")}


def default_promoter() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return "unknown"


@contextmanager
def _workdir(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="quantlab-promote-") as tmp:
        yield Path(tmp)


def promote(
    store: ObjectStore,
    layout: Layout,
    job_id: str,
    *,
    symbol: str | None = None,
    gate: GateRule | None = None,
    force: bool = False,
    promoted_by: str | None = None,
    workdir: Path | None = None,
) -> PromotionResult:
    """Verify job `job_id`, apply the gate (unless `force`) and publish it for `symbol`.
    `gate` defaults to the `promotion` section of the spec the job ran with."""
    with _workdir(workdir) as work:
        candidate = load_candidate(store, layout, job_id, work)
    return promote_candidate(
        store, layout, candidate, symbol, gate or candidate.gate, force, promoted_by
    )


def promote_candidate(
    store: ObjectStore,
    layout: Layout,
    candidate: PromotionCandidate,
    symbol: str | None,
    gate: GateRule,
    force: bool,
    promoted_by: str | None,
) -> PromotionResult:
    symbol = resolve_symbol(symbol, candidate.symbols, candidate.job_id)
    paths = production_paths(layout, symbol)
    sha = sha256_bytes(candidate.data)
    live = read_live(store, paths)
    if live is not None and live.etag is not None and live.manifest.model.sha256 == sha:
        current = sync_seed_copy(store, paths)  # a re-run also repairs a stale copy
        return _result(store, paths, live.manifest, "already_live", current)
    try:
        decision = check_gate(
            candidate.job_id, candidate.metrics, live.manifest if live else None, gate
        )
    except GateRefused as exc:
        if not force:
            raise
        decision = str(exc).removesuffix(FORCE_HINT)
    decision = f"forced: {decision}" if force else decision
    meta = candidate.model_meta
    manifest = _manifest(
        paths,
        live,
        "promote",
        promoted_by,
        forced=force,
        gate=decision,
        gate_rule=GateRuleDoc(max_ic_drop=gate.max_ic_drop, min_ic=gate.min_ic),
        source_job=candidate.job_id,
        metrics=candidate.metrics,
        sample=SampleCheck(ic=candidate.sample_ic, rows=candidate.sample_rows),
        rollback_to=live.version if live is not None else None,
        model=ProductionModel(
            sha256=sha,
            size=len(candidate.data),
            features=meta.features,
            label=meta.label,
            featureset=meta.featureset,
            config_hash=meta.config_hash,
        ),
    )
    done = publish(store, paths, live, manifest, candidate.data)
    return _result(store, paths, done.manifest, "promoted", done.seed_copy_current)


def rollback(
    store: ObjectStore,
    layout: Layout,
    symbol: str,
    *,
    promoted_by: str | None = None,
    workdir: Path | None = None,
) -> PromotionResult:
    """Restore, byte for byte, the version the live one replaced (for a live rollback: the
    version before the one it restored), as a new version committed like a promotion."""
    paths = production_paths(layout, symbol)
    live = read_live(store, paths)
    if live is None or live.etag is None:
        raise NothingToRollBack(
            f"{store.uri(paths.manifest)} does not exist: {symbol} has no "
            "managed production model to roll back"
        )
    target = live.manifest.rollback_to
    if target is None:
        restored = live.manifest.restored_version
        raise NothingToRollBack(
            f"{symbol}: production v{live.version} has no earlier version to restore"
            + (f" (it is a rollback to v{restored})" if restored is not None else "")
        )
    old, data = read_history(store, paths, target)
    if old.action != "legacy":
        with _workdir(workdir) as work:
            path = work / f"rollback-{symbol}-v{target}.bin"
            path.write_bytes(data)
            try:
                with LOAD_LOCK:
                    load_model(path)
            except Exception as exc:  # a damaged archive fails in many ways inside torch
                raise CandidateInvalid(
                    f"history v{target} of {symbol} does not load: {exc}"
                ) from None
    manifest = _manifest(
        paths,
        live,
        "rollback",
        promoted_by,
        gate="not applied: rollback",
        source_job=old.source_job,
        metrics=old.metrics,
        sample=old.sample,
        model=old.model,
        restored_version=target,
        rolled_back_from=live.version,
        rollback_to=old.rollback_to,
    )
    done = publish(store, paths, live, manifest, data)
    return _result(store, paths, done.manifest, "rolled_back", done.seed_copy_current)


def _manifest(
    paths: ProductionPaths,
    live: Live | None,
    action: Literal["promote", "rollback"],
    by: str | None,
    **fields: Any,
) -> ProductionManifest:
    return ProductionManifest(
        symbol=paths.symbol,
        version=live.version + 1 if live is not None else 1,
        previous_version=live.version if live is not None else None,
        action=action,
        promoted_at=utc_now(),
        promoted_by=by or default_promoter(),
        code_version=__version__,
        **fields,
    )


def _result(
    store: ObjectStore,
    paths: ProductionPaths,
    manifest: ProductionManifest,
    outcome: Literal["promoted", "rolled_back", "already_live"],
    seed_current: bool,
) -> PromotionResult:
    return PromotionResult(
        symbol=paths.symbol,
        action=manifest.action,
        outcome=outcome,
        version=manifest.version,
        previous_version=manifest.previous_version,
        source_job=manifest.source_job,
        forced=manifest.forced,
        gate=manifest.gate,
        manifest_uri=store.uri(paths.manifest),
        model_uri=store.uri(paths.model),
        seed_copy_current=seed_current,
        manifest=manifest,
    )


def maybe_auto_promote(
    spec_promotion: AutoRule,
    store: ObjectStore,
    layout: Layout,
    job_id: str,
    *,
    symbol: str | None = None,
    promoted_by: str = "auto",
    workdir: Path | None = None,
) -> dict[str, Any]:
    """The pipeline step after a successful job: promote when `spec_promotion.auto` is on and
    the gate passes, for `symbol` or every symbol the job trained on. Never raises a
    TrainerError: refusals, lost races and invalid artifacts come back as
    `{promoted: False, reason, error, exit_code}` for the caller to report."""
    if not spec_promotion.auto:
        return {
            "promoted": False,
            "reason": "promotion.auto is off",
            "job_id": job_id,
            "symbols": [],
        }
    results: list[dict[str, Any]] = []
    try:
        with _workdir(workdir) as work:
            candidate = load_candidate(store, layout, job_id, work)
    except TrainerError as exc:
        return _not_promoted(job_id, None, exc) | {"symbols": []}
    symbols = [symbol] if symbol is not None else list(candidate.symbols)
    for sym in symbols:
        try:
            done = promote_candidate(
                store, layout, candidate, sym, spec_promotion, False, promoted_by
            )
        except TrainerError as exc:
            results.append(_not_promoted(job_id, sym, exc))
            continue
        reason = f"{done.outcome} as v{done.version}; gate {done.gate}"
        results.append({"promoted": True, "symbol": sym, "reason": reason, **done.to_dict()})
    return {
        "promoted": all(r["promoted"] for r in results),
        "reason": "; ".join(f"{r['symbol']}: {r['reason']}" for r in results),
        "job_id": job_id,
        "symbols": results,
    }


def _not_promoted(job_id: str, symbol: str | None, exc: TrainerError) -> dict[str, Any]:
    return {
        "promoted": False,
        "symbol": symbol,
        "job_id": job_id,
        "reason": str(exc),
        "error": type(exc).__name__,
        "exit_code": exit_code_of(exc),
    }
