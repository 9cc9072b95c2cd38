"""Promotion of a committed job to production, rollback, and the automatic pipeline step.

A candidate is checked before anything is written: every artifact against the job manifest
(size and sha256), `model.bin` re-run on `val_sample.parquet` to reproduce the recorded
predictions, and the symbol taken from the job's own spec. The gate then compares the
candidate's validation metrics with those of the version read from production, and the commit
is a conditional write against that same version (see `trainer.production`), so the gate
never judges against one version while the commit replaces another.
"""

from __future__ import annotations

import getpass
import json
import math
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml
from pydantic import ValidationError

from trainer import __version__
from trainer.artifacts import VerificationError, utc_now, verify
from trainer.errors import EXIT_DATA, Refused, TrainerError
from trainer.export import load_model
from trainer.layout import Layout
from trainer.production import (
    FORMAT,
    Live,
    SymbolError,
    checked_symbol,
    manifest_loc,
    publish,
    read_history,
    read_live,
    seed_loc,
    sha256_bytes,
    sync_seed_copy,
)
from trainer.spec.model import PromotionSpec
from trainer.storage.base import ObjectStore
from trainer.train.metrics import pearson

SAMPLE = "val_sample.parquet"
TOLERANCE = 1e-4
# torch.export.load keeps its deserializer in a global: two loads at once in one process fail.
_LOAD_LOCK = threading.Lock()


class GateRule(Protocol):
    """What the gate reads; `trainer.spec.model.PromotionSpec` is one."""

    @property
    def max_ic_drop(self) -> float: ...

    @property
    def min_ic(self) -> float | None: ...


class AutoRule(GateRule, Protocol):
    """The JobSpec's `promotion` section as the pipeline step reads it."""

    @property
    def auto(self) -> bool: ...


class CandidateInvalid(VerificationError):
    """The job's artifacts are not a model that can go live; the message names the file."""

    exit_code = EXIT_DATA


class GateRefused(Refused):
    """The candidate's validation metrics do not pass the promotion gate."""


class NothingToRollBack(Refused):
    """Production has no earlier version to restore."""


@dataclass(frozen=True)
class Candidate:
    """A verified job model, ready to publish."""

    job_id: str
    symbols: tuple[str, ...]
    data: bytes
    metrics: dict[str, Any]
    model_meta: dict[str, Any]
    sample_ic: float
    sample_rows: int
    gate: GateRule
    """The job's own `promotion` section, the gate used when the caller gives none."""


@dataclass(frozen=True)
class PromotionResult:
    symbol: str
    action: str
    """`promote` or `rollback`."""
    outcome: str
    """`promoted`, `rolled_back`, or `already_live` (nothing written)."""
    version: int
    previous_version: int | None
    source_job: str | None
    forced: bool
    gate: str
    manifest_uri: str
    model_uri: str
    seed_copy_current: bool
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def load_candidate(store: ObjectStore, layout: Layout, job_id: str, workdir: Path) -> Candidate:
    """Verify the job's artifacts and that its model reproduces the validation sample."""
    where = workdir / f"candidate-{job_id}"
    where.mkdir(parents=True, exist_ok=True)
    try:
        manifest = verify(store, layout, job_id, where)
    except VerificationError as exc:
        raise CandidateInvalid(f"job {job_id} cannot be promoted: {exc}") from None
    names = {entry["name"] for entry in manifest["files"]}
    for name in ("model.bin", "metrics.json", "jobspec.yaml", SAMPLE):
        if name not in names:
            uri = store.uri(layout.job_file(job_id, name))
            raise CandidateInvalid(f"{uri} is not in the job's manifest; the job cannot go live")
    model_uri = store.uri(layout.job_file(job_id, "model.bin"))
    sample_uri = store.uri(layout.job_file(job_id, SAMPLE))
    model_meta, ic, rows = check_sample(where / "model.bin", where / SAMPLE, model_uri, sample_uri)
    if model_meta.get("job_id") != job_id:
        raise CandidateInvalid(f"{model_uri} says it was trained by {model_meta.get('job_id')!r}")
    try:
        metrics = json.loads((where / "metrics.json").read_text("utf-8")).get("final")
    except (ValueError, AttributeError):
        metrics = None
    if not isinstance(metrics, dict) or "ic" not in metrics:
        uri = store.uri(layout.job_file(job_id, "metrics.json"))
        raise CandidateInvalid(f"{uri} has no `final` validation metrics")
    spec_uri = store.uri(layout.job_file(job_id, "jobspec.yaml"))
    symbols, gate = _read_jobspec(where / "jobspec.yaml", spec_uri)
    data = (where / "model.bin").read_bytes()
    return Candidate(job_id, symbols, data, metrics, model_meta, ic, rows, gate)


def check_sample(
    model_path: Path, sample_path: Path, model_uri: str, sample_uri: str
) -> tuple[dict[str, Any], float, int]:
    """Run the model on the sample's features, in the order its metadata lists them; it must
    reproduce `__prediction`. Returns the model metadata, the sample IC and its row count."""
    try:
        with _LOAD_LOCK:
            module, meta = load_model(model_path)
    except Exception as exc:  # a damaged archive fails in many ways inside torch
        raise CandidateInvalid(f"{model_uri} does not load: {type(exc).__name__}: {exc}") from None
    table = pq.read_table(sample_path)
    features = list(meta.get("features") or [])
    missing = [c for c in (*features, "__label", "__prediction") if c not in table.column_names]
    if not features or missing or table.num_rows == 0:
        raise CandidateInvalid(
            f"{sample_uri} cannot check {model_uri}: {table.num_rows} rows, "
            f"missing columns {missing or 'none'}, model features {features or 'none'}"
        )
    columns = [table[c].to_numpy(zero_copy_only=False).astype(np.float32) for c in features]
    x = torch.from_numpy(np.ascontiguousarray(np.column_stack(columns)))
    with torch.no_grad():
        pred = module(x).numpy().astype(np.float64)
    recorded = table["__prediction"].to_numpy(zero_copy_only=False).astype(np.float64)
    if pred.shape != recorded.shape or not np.allclose(
        pred, recorded, atol=TOLERANCE, rtol=TOLERANCE, equal_nan=True
    ):
        worst = float(np.nanmax(np.abs(pred - recorded))) if pred.shape == recorded.shape else -1
        raise CandidateInvalid(
            f"{model_uri} does not reproduce the predictions recorded in {sample_uri}: largest "
            f"difference {worst:.3g} over {table.num_rows} rows (tolerance {TOLERANCE})"
        )
    label = table["__label"].to_numpy(zero_copy_only=False).astype(np.float64)
    ok = np.isfinite(pred) & np.isfinite(label)
    return meta, pearson(pred[ok], label[ok]), int(table.num_rows)


def _read_jobspec(path: Path, uri: str) -> tuple[tuple[str, ...], GateRule]:
    """The symbols the job trained on and its `promotion` rule, from the spec it ran."""
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
        symbols = raw["data"]["symbols"]
        gate = PromotionSpec.model_validate(raw.get("promotion") or {})
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValidationError) as exc:
        raise CandidateInvalid(f"{uri} is not a readable JobSpec: {exc}") from None
    if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        raise CandidateInvalid(f"{uri}: `data.symbols` is not a list of symbols")
    return tuple(symbols), gate


def resolve_symbol(requested: str | None, job_symbols: tuple[str, ...], job_id: str) -> str:
    """The job's only symbol by default; with several, the caller must pick one of them."""
    if requested is None:
        if len(job_symbols) == 1:
            return job_symbols[0]
        raise SymbolError(
            f"job {job_id} trained on {len(job_symbols)} symbols {list(job_symbols)}: "
            "choose one with --symbol"
        )
    if requested not in job_symbols:
        raise SymbolError(
            f"job {job_id} did not train on {requested!r}; it trained on {list(job_symbols)}"
        )
    return checked_symbol(requested)


def check_gate(candidate: Candidate, live: Live | None, rule: GateRule) -> str:
    """Raise GateRefused, naming both metrics, unless the candidate may replace `live`.
    Returns how the gate decided, for the production manifest."""
    value = candidate.metrics.get("ic")
    ic = float(value) if isinstance(value, int | float) else math.nan
    ours = f"candidate {candidate.job_id} validation IC {ic:.4f}"
    live_ic = _ic(live.manifest) if live is not None else None
    theirs = (
        "no production model"
        if live is None
        else f"production v{live.version} ({live.manifest.get('source_job') or 'no job'}) "
        + (f"validation IC {live_ic:.4f}" if live_ic is not None else "with no recorded IC")
    )
    if not math.isfinite(ic):
        raise GateRefused(f"gate refused: {ours} is not a number; {theirs}")
    if rule.min_ic is not None and ic < rule.min_ic:
        raise GateRefused(
            f"gate refused: {ours} is below min_ic {rule.min_ic:.4f}; {theirs}. "
            "Use --force to promote anyway"
        )
    if live_ic is not None and ic < live_ic - rule.max_ic_drop:
        raise GateRefused(
            f"gate refused: {ours} is more than max_ic_drop {rule.max_ic_drop:.4f} below "
            f"{theirs}. Use --force to promote anyway"
        )
    return f"passed: {ours} against {theirs}"


def _ic(manifest: dict[str, Any]) -> float | None:
    value = (manifest.get("metrics") or {}).get("ic")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


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
    candidate: Candidate,
    symbol: str | None,
    gate: GateRule,
    force: bool,
    promoted_by: str | None,
) -> PromotionResult:
    symbol = resolve_symbol(symbol, candidate.symbols, candidate.job_id)
    sha = sha256_bytes(candidate.data)
    live = read_live(store, layout, symbol)
    if live is not None and live.etag is not None and live.manifest["model"]["sha256"] == sha:
        current = sync_seed_copy(store, layout, symbol)  # a re-run also repairs a stale copy
        return _result(store, layout, symbol, live.manifest, "already_live", current)
    try:
        decision = check_gate(candidate, live, gate)
    except GateRefused as exc:
        if not force:
            raise
        decision = str(exc).removesuffix(". Use --force to promote anyway")
    decision = f"forced: {decision}" if force else decision
    meta = candidate.model_meta
    manifest = _manifest(symbol, live, "promote", promoted_by, force, decision) | {
        "gate_rule": {"max_ic_drop": gate.max_ic_drop, "min_ic": gate.min_ic},
        "source_job": candidate.job_id,
        "metrics": candidate.metrics,
        "sample": {"ic": candidate.sample_ic, "rows": candidate.sample_rows},
        "rollback_to": live.version if live is not None else None,
        "model": {
            "sha256": sha,
            "size": len(candidate.data),
            **{k: meta.get(k) for k in ("features", "label", "featureset", "config_hash")},
        },
    }
    done = publish(store, layout, symbol, live, manifest, candidate.data)
    return _result(store, layout, symbol, done.manifest, "promoted", done.seed_copy_current)


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
    symbol = checked_symbol(symbol)
    live = read_live(store, layout, symbol)
    if live is None or live.etag is None:
        raise NothingToRollBack(
            f"{store.uri(manifest_loc(layout, symbol))} does not exist: {symbol} has no "
            "managed production model to roll back"
        )
    target = live.manifest.get("rollback_to")
    if target is None:
        restored = live.manifest.get("restored_version")
        raise NothingToRollBack(
            f"{symbol}: production v{live.version} has no earlier version to restore"
            + (f" (it is a rollback to v{restored})" if restored is not None else "")
        )
    old, data = read_history(store, layout, symbol, int(target))
    if old.get("action") != "legacy":
        with _workdir(workdir) as work:
            path = work / f"rollback-{symbol}-v{target}.bin"
            path.write_bytes(data)
            try:
                with _LOAD_LOCK:
                    load_model(path)
            except Exception as exc:  # same reason as in check_sample
                raise CandidateInvalid(
                    f"history v{target} of {symbol} does not load: {exc}"
                ) from None
    manifest = _manifest(symbol, live, "rollback", promoted_by, False, "not applied: rollback")
    manifest |= {
        "source_job": old.get("source_job"),
        "metrics": old.get("metrics") or {},
        "sample": old.get("sample"),
        "model": old["model"],
        "restored_version": int(target),
        "rolled_back_from": live.version,
        "rollback_to": old.get("rollback_to"),
    }
    done = publish(store, layout, symbol, live, manifest, data)
    return _result(store, layout, symbol, done.manifest, "rolled_back", done.seed_copy_current)


def _manifest(
    symbol: str, live: Live | None, action: str, by: str | None, forced: bool, gate: str
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "symbol": symbol,
        "version": live.version + 1 if live is not None else 1,
        "previous_version": live.version if live is not None else None,
        "action": action,
        "forced": forced,
        "gate": gate,
        "promoted_at": utc_now(),
        "promoted_by": by or default_promoter(),
        "code_version": __version__,
        "restored_version": None,
        "rolled_back_from": None,
    }


def _result(
    store: ObjectStore,
    layout: Layout,
    symbol: str,
    manifest: dict[str, Any],
    outcome: str,
    seed_current: bool,
) -> PromotionResult:
    return PromotionResult(
        symbol=symbol,
        action=manifest["action"],
        outcome=outcome,
        version=int(manifest["version"]),
        previous_version=manifest.get("previous_version"),
        source_job=manifest.get("source_job"),
        forced=bool(manifest.get("forced")),
        gate=str(manifest.get("gate", "")),
        manifest_uri=store.uri(manifest_loc(layout, symbol)),
        model_uri=store.uri(seed_loc(layout, symbol)),
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
        "exit_code": exc.exit_code,
    }
