"""Production state per symbol: the manifest that commits it, model objects, history, reads.

Under `models/production/<symbol>/` (storage layout v1, section 2.D):

    manifest.json              the live version: the one object whose write publishes
    objects/<sha256>.bin       model bytes, named by their content, never rewritten
    model.bin                  copy of the live model at the seed path, refreshed after commit
    history/<version>/         every replaced version: its manifest.json and model.bin

Guarantee. Publishing writes, in this order: the replaced version into `history/`, the new
bytes into `objects/`, then `manifest.json` with ONE conditional write against the etag read
at the start (`if_absent` when production is empty). That write is the commit point. Two
writers that read the same version both aim at the same etag, so exactly one succeeds; the
other gets `PromotionConflict` (exit code 9) and has changed nothing a reader can see: its
`history/` entry holds the same bytes the winner writes there (a version's content is fixed
once committed), and its `objects/` entry is referenced by no manifest. The model object is
named by its sha256, so two writers never put different bytes at one key.

The live pair is the manifest and the object it names, and that pair is always consistent: the
object exists before the manifest points at it and is never modified. `model.bin` cannot be
swapped together with the manifest, so it trails it briefly after each commit (or until the
next publish if the writer died in between). Consumers must therefore check `model.bin`'s
sha256 against `manifest.json` and fall back to `objects/<sha256>.bin`; `read_production`
does exactly that. The copy is refreshed with a conditional write against the etag read
*before* re-reading the manifest, so a writer that is no longer current cannot overwrite the
copy a newer commit has published; after writing it re-checks the manifest and, if another
commit landed meanwhile, copies that one instead.

A bare `model.bin` without a manifest (production from before this module) is adopted as
version 0: it is kept in `history/0/` (first writer wins) before version 1 is committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from trainer.errors import (
    EXIT_SPEC,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    TrainerError,
)
from trainer.layout import PRODUCTION_ROOT, Layout, Loc
from trainer.storage.base import ObjectStore

log = logging.getLogger("quantlab.production")

FORMAT = "quantlab-production/v1"
MANIFEST = "manifest.json"
SEED_MODEL = "model.bin"
OBJECTS = "objects"
HISTORY = "history"
_READ_ATTEMPTS = 3
_SYNC_ATTEMPTS = 4


class SymbolError(TrainerError):
    """The symbol is not one production can hold, or not one the job trained on."""

    exit_code = EXIT_SPEC


class PromotionConflict(PreconditionFailed):
    """Another promotion or rollback committed first; production holds the winner's version."""


class ProductionCorrupt(StorageError):
    """A production object is missing or does not match the sha256 its manifest records."""


class NoProduction(ObjectNotFound):
    """The symbol has no production model managed by a manifest."""


@dataclass(frozen=True)
class Live:
    """The production state read once: the manifest, its exact bytes and the etag to CAS on."""

    manifest: dict[str, Any]
    raw: bytes
    etag: str | None
    """None for an adopted bare `model.bin`: the commit then requires the manifest absent."""
    legacy_data: bytes | None = None
    """The bare `model.bin` bytes when the state is an adopted legacy version 0."""

    @property
    def version(self) -> int:
        return int(self.manifest["version"])


@dataclass(frozen=True)
class LiveModel:
    """What a consumer loads: a manifest and model bytes verified against it."""

    symbol: str
    manifest: dict[str, Any]
    data: bytes
    source: str
    """The URI the bytes came from: the seed `model.bin`, or the object when that lags."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dumps(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def checked_symbol(symbol: str) -> str:
    """The symbol, if the layout can write it (lower case, one path segment)."""
    try:
        Layout().production_dir(symbol)
    except ValueError as exc:
        raise SymbolError(f"{exc}, e.g. btcusdt") from None
    return symbol


def manifest_loc(layout: Layout, symbol: str) -> Loc:
    return layout.production_file(symbol, MANIFEST)


def seed_loc(layout: Layout, symbol: str) -> Loc:
    return layout.production_file(symbol, SEED_MODEL)


def object_loc(layout: Layout, symbol: str, sha256: str) -> Loc:
    return layout.production_file(symbol, f"{OBJECTS}/{sha256}.bin")


def history_loc(layout: Layout, symbol: str, version: int, name: str) -> Loc:
    return layout.production_file(symbol, f"{HISTORY}/{version}/{name}")


def read_live(store: ObjectStore, layout: Layout, symbol: str) -> Live | None:
    """The live state, or None when the symbol has no production at all.

    The etag is read BEFORE the body and confirmed after it: a body newer than the etag would
    only make the later conditional write fail, never commit over an unseen version."""
    loc = manifest_loc(layout, symbol)
    for _ in range(_READ_ATTEMPTS):
        before = store.head(loc)
        if before is None:
            return _legacy(store, layout, symbol)
        try:
            raw = store.get(loc)
        except ObjectNotFound:
            continue
        after = store.head(loc)
        if after is not None and after.etag == before.etag:
            return Live(_parse(raw, store.uri(loc)), raw, before.etag)
    raise PromotionConflict(f"{store.uri(loc)} kept changing while it was read; retry")


def _legacy(store: ObjectStore, layout: Layout, symbol: str) -> Live | None:
    try:
        data = store.get(seed_loc(layout, symbol))
    except ObjectNotFound:
        return None
    manifest = {
        "format": FORMAT,
        "symbol": symbol,
        "version": 0,
        "action": "legacy",
        "previous_version": None,
        "rollback_to": None,
        "source_job": None,
        "metrics": {},
        "model": {"sha256": sha256_bytes(data), "size": len(data)},
    }
    return Live(manifest, dumps(manifest), None, legacy_data=data)


def _parse(raw: bytes, uri: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise ProductionCorrupt(f"{uri} is not valid JSON; restore it from history/") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise ProductionCorrupt(f"{uri} is not a production manifest; restore it from history/")
    return manifest


def model_bytes(store: ObjectStore, layout: Layout, symbol: str, manifest: dict[str, Any]) -> bytes:
    """The bytes a manifest names, checked against its sha256: the object, else the history
    copy, else the seed copy."""
    want = manifest["model"]["sha256"]
    places = [
        object_loc(layout, symbol, want),
        history_loc(layout, symbol, int(manifest["version"]), SEED_MODEL),
        seed_loc(layout, symbol),
    ]
    for loc in places:
        try:
            data = store.get(loc)
        except ObjectNotFound:
            continue
        if sha256_bytes(data) == want:
            return data
    raise ProductionCorrupt(
        f"{store.uri(places[0])} is missing or does not match the sha256 that version "
        f"{manifest['version']} records; roll back, or promote a job again"
    )


def read_history(
    store: ObjectStore, layout: Layout, symbol: str, version: int
) -> tuple[dict[str, Any], bytes]:
    """A replaced version's manifest and its model bytes, verified against each other."""
    loc = history_loc(layout, symbol, version, MANIFEST)
    try:
        manifest = _parse(store.get(loc), store.uri(loc))
        data = store.get(history_loc(layout, symbol, version, SEED_MODEL))
    except ObjectNotFound as exc:
        raise ProductionCorrupt(f"history of version {version} is incomplete: {exc}") from None
    if sha256_bytes(data) != manifest["model"]["sha256"]:
        raise ProductionCorrupt(
            f"{store.uri(history_loc(layout, symbol, version, SEED_MODEL))} does not match the "
            f"sha256 in {store.uri(loc)}"
        )
    return manifest, data


@dataclass(frozen=True)
class Published:
    manifest: dict[str, Any]
    seed_copy_current: bool


def publish(
    store: ObjectStore,
    layout: Layout,
    symbol: str,
    base: Live | None,
    manifest: dict[str, Any],
    data: bytes,
) -> Published:
    """Keep `base` in history, store the new bytes, then commit `manifest` against `base`."""
    if base is not None:
        _keep_in_history(store, layout, symbol, base)
    store.put(object_loc(layout, symbol, manifest["model"]["sha256"]), data)
    loc = manifest_loc(layout, symbol)
    try:
        if base is None or base.etag is None:
            store.put(loc, dumps(manifest), if_absent=True)
        else:
            store.put(loc, dumps(manifest), if_match=base.etag)
    except PreconditionFailed:
        seen = "no production" if base is None else f"version {base.version}"
        raise PromotionConflict(
            f"{store.uri(loc)} changed after {seen} was read: another promotion or rollback "
            f"of {symbol} committed first, and this one changed nothing live; check "
            f"`quantlab-train production {symbol}` and retry if still wanted"
        ) from None
    log.info("%s: version %s committed at %s", symbol, manifest["version"], store.uri(loc))
    try:
        current = sync_seed_copy(store, layout, symbol)
    except StorageError as exc:  # committed already; the copy is refreshed by the next writer
        log.warning("%s: could not refresh %s: %s", symbol, SEED_MODEL, exc)
        current = False
    return Published(manifest, current)


def _keep_in_history(store: ObjectStore, layout: Layout, symbol: str, base: Live) -> None:
    model = history_loc(layout, symbol, base.version, SEED_MODEL)
    record = history_loc(layout, symbol, base.version, MANIFEST)
    if base.legacy_data is None:
        store.put(model, model_bytes(store, layout, symbol, base.manifest))
        store.put(record, base.raw)
        return
    # Adopting a bare model.bin: the first writer's copy stands (it was read before any commit).
    for loc, body in ((model, base.legacy_data), (record, base.raw)):
        with suppress(PreconditionFailed):
            store.put(loc, body, if_absent=True)


def sync_seed_copy(store: ObjectStore, layout: Layout, symbol: str) -> bool:
    """Make `model.bin` equal the live version's bytes; True when it is current."""
    seed = seed_loc(layout, symbol)
    for _ in range(_SYNC_ATTEMPTS):
        info = store.head(seed)  # the copy's etag first, then the manifest: see the docstring
        live = read_live(store, layout, symbol)
        if live is None or live.etag is None:
            return False
        want = live.manifest["model"]
        if info is not None and info.size == want["size"]:
            try:
                if sha256_bytes(store.get(seed)) == want["sha256"]:
                    return True
            except ObjectNotFound:
                continue
        data = model_bytes(store, layout, symbol, live.manifest)
        try:
            if info is None:
                store.put(seed, data, if_absent=True)
            else:
                store.put(seed, data, if_match=info.etag)
        except PreconditionFailed:
            continue
        now = store.head(manifest_loc(layout, symbol))
        if now is not None and now.etag == live.etag:
            return True
    return False


def read_production(store: ObjectStore, layout: Layout, symbol: str) -> LiveModel:
    """The live model for a consumer: `model.bin` when its sha256 matches the manifest, else
    the object the manifest names. Never returns bytes that disagree with the manifest."""
    live = read_live(store, layout, symbol)
    if live is None or live.etag is None:
        raise NoProduction(
            f"{store.uri(manifest_loc(layout, symbol))} does not exist: {symbol} has no "
            "managed production model; promote a job first"
        )
    seed = seed_loc(layout, symbol)
    try:
        data = store.get(seed)
        if sha256_bytes(data) == live.manifest["model"]["sha256"]:
            return LiveModel(symbol, live.manifest, data, store.uri(seed))
    except ObjectNotFound:
        pass
    data = model_bytes(store, layout, symbol, live.manifest)
    source = object_loc(layout, symbol, live.manifest["model"]["sha256"])
    return LiveModel(symbol, live.manifest, data, store.uri(source))


def production_status(
    store: ObjectStore, layout: Layout, symbol: str | None = None
) -> list[dict[str, Any]]:
    """What is live per symbol (source job, metrics, version) and its history, newest first."""
    symbols = [checked_symbol(symbol)] if symbol is not None else _symbols(store, layout)
    return [_status(store, layout, s) for s in symbols]


def _symbols(store: ObjectStore, layout: Layout) -> list[str]:
    root = Loc(layout.buckets.artifacts_bucket, f"{PRODUCTION_ROOT}/")
    found = set()
    for info in store.list(root):
        parts = info.loc.key[len(root.key) :].split("/")
        if len(parts) == 2 and parts[1] in (MANIFEST, SEED_MODEL):
            found.add(parts[0])
    return sorted(found)


def _status(store: ObjectStore, layout: Layout, symbol: str) -> dict[str, Any]:
    live = read_live(store, layout, symbol)
    entry: dict[str, Any] = {"symbol": symbol, "uri": store.uri(manifest_loc(layout, symbol))}
    if live is None:
        return entry | {"live": None, "history": []}
    m = live.manifest
    entry |= {"live": _summary(m), "managed": live.etag is not None, "model": m["model"]}
    entry["seed_copy"] = _seed_state(store, layout, symbol, m["model"]["sha256"])
    versions = set()
    for info in store.list(layout.production_file(symbol, f"{HISTORY}/")):
        tail = info.loc.key.rsplit(f"/{HISTORY}/", 1)[-1].split("/")
        if len(tail) == 2 and tail[1] == MANIFEST and tail[0].isdigit():
            versions.add(int(tail[0]))
    history = []
    for version in sorted(versions, reverse=True):
        loc = history_loc(layout, symbol, version, MANIFEST)
        history.append(_summary(_parse(store.get(loc), store.uri(loc))))
    return entry | {"history": history}


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "version",
        "action",
        "source_job",
        "metrics",
        "forced",
        "promoted_at",
        "promoted_by",
        "previous_version",
        "restored_version",
        "rollback_to",
    )
    return {k: m.get(k) for k in keys} | {"sha256": m["model"]["sha256"]}


def _seed_state(store: ObjectStore, layout: Layout, symbol: str, want: str) -> str:
    try:
        return "current" if sha256_bytes(store.get(seed_loc(layout, symbol))) == want else "stale"
    except ObjectNotFound:
        return "missing"
