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
import logging
from contextlib import suppress
from dataclasses import dataclass

from trainer.errors import ObjectNotFound, PreconditionFailed, StorageError, UsageError
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout, ProductionPaths, check_symbol
from trainer.store.records import (
    PRODUCTION_FORMAT,
    ProductionManifest,
    ProductionModel,
    parse_record,
    write_record,
)

log = logging.getLogger("quantlab.production")

_SYNC_ATTEMPTS = 4


class SymbolError(UsageError):
    """The symbol is not one production can hold, or not one the job trained on."""


class PromotionConflict(PreconditionFailed):
    """Another promotion or rollback committed first; production holds the winner's version."""


class ProductionCorrupt(StorageError):
    """A production object is missing or does not match the sha256 its manifest records."""


class NoProduction(ObjectNotFound):
    """The symbol has no production model managed by a manifest."""


@dataclass(frozen=True)
class Live:
    """The production state read once: the manifest, its exact bytes and the etag to CAS on."""

    manifest: ProductionManifest
    raw: bytes
    etag: str | None
    """None for an adopted bare `model.bin`: the commit then requires the manifest absent."""
    legacy_data: bytes | None = None
    """The bare `model.bin` bytes when the state is an adopted legacy version 0."""

    @property
    def version(self) -> int:
        return self.manifest.version


@dataclass(frozen=True)
class LiveModel:
    """What a consumer loads: a manifest and model bytes verified against it."""

    symbol: str
    manifest: ProductionManifest
    data: bytes
    source: str
    """The URI the bytes came from: the seed `model.bin`, or the object when that lags."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def production_paths(layout: Layout, symbol: str) -> ProductionPaths:
    """The paths of `symbol`'s production; SymbolError when the layout cannot write it."""
    try:
        return layout.production(symbol)
    except ValueError as exc:
        raise SymbolError(f"{exc}, e.g. btcusdt") from None


def read_live(store: ObjectStore, paths: ProductionPaths) -> Live | None:
    """The live state, or None when the symbol has no production at all. The etag is that of
    the very body read, so a later conditional write commits over exactly what was seen."""
    got = store.read(paths.manifest)
    if got is None:
        return _legacy(store, paths)
    raw, info = got
    return Live(_parse(raw, store.uri(paths.manifest)), raw, info.etag)


def _legacy(store: ObjectStore, paths: ProductionPaths) -> Live | None:
    try:
        data = store.get(paths.model)
    except ObjectNotFound:
        return None
    manifest = ProductionManifest(
        format=PRODUCTION_FORMAT,
        symbol=paths.symbol,
        version=0,
        action="legacy",
        model=ProductionModel(sha256=sha256_bytes(data), size=len(data)),
    )
    return Live(manifest, manifest.to_json(), None, legacy_data=data)


def _parse(raw: bytes, uri: str) -> ProductionManifest:
    try:
        return parse_record(ProductionManifest, raw, uri)
    except Exception as exc:  # VerificationError: say how to recover here
        raise ProductionCorrupt(f"{exc}; restore it from history/") from None


def model_bytes(store: ObjectStore, paths: ProductionPaths, manifest: ProductionManifest) -> bytes:
    """The bytes a manifest names, checked against its sha256: the object, else the history
    copy, else the seed copy."""
    want = manifest.model.sha256
    places = [
        paths.object(want),
        paths.history(manifest.version, paths.MODEL),
        paths.model,
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
        f"{manifest.version} records; roll back, or promote a job again"
    )


def read_history(
    store: ObjectStore, paths: ProductionPaths, version: int
) -> tuple[ProductionManifest, bytes]:
    """A replaced version's manifest and its model bytes, verified against each other."""
    loc = paths.history(version, paths.MANIFEST)
    model = paths.history(version, paths.MODEL)
    try:
        manifest = _parse(store.get(loc), store.uri(loc))
        data = store.get(model)
    except ObjectNotFound as exc:
        raise ProductionCorrupt(f"history of version {version} is incomplete: {exc}") from None
    if sha256_bytes(data) != manifest.model.sha256:
        raise ProductionCorrupt(f"{store.uri(model)} does not match the sha256 in {store.uri(loc)}")
    return manifest, data


@dataclass(frozen=True)
class Published:
    manifest: ProductionManifest
    seed_copy_current: bool


def publish(
    store: ObjectStore,
    paths: ProductionPaths,
    base: Live | None,
    manifest: ProductionManifest,
    data: bytes,
) -> Published:
    """Keep `base` in history, store the new bytes, then commit `manifest` against `base`.
    Nothing is written on a store that would not honour the compare-and-swap."""
    symbol = paths.symbol
    store.require_conditional_writes(paths.manifest.bucket)
    if base is not None:
        _keep_in_history(store, paths, base)
    store.put(paths.object(manifest.model.sha256), data)
    loc = paths.manifest
    try:
        if base is None or base.etag is None:
            write_record(store, loc, manifest, if_absent=True)
        else:
            write_record(store, loc, manifest, if_match=base.etag)
    except PreconditionFailed:
        seen = "no production" if base is None else f"version {base.version}"
        raise PromotionConflict(
            f"{store.uri(loc)} changed after {seen} was read: another promotion or rollback "
            f"of {symbol} committed first, and this one changed nothing live; check "
            f"`quantlab-train production {symbol}` and retry if still wanted"
        ) from None
    log.info("%s: version %s committed at %s", symbol, manifest.version, store.uri(loc))
    try:
        current = sync_seed_copy(store, paths)
    except StorageError as exc:  # committed already; the copy is refreshed by the next writer
        log.warning("%s: could not refresh %s: %s", symbol, paths.MODEL, exc)
        current = False
    return Published(manifest, current)


def _keep_in_history(store: ObjectStore, paths: ProductionPaths, base: Live) -> None:
    model = paths.history(base.version, paths.MODEL)
    record = paths.history(base.version, paths.MANIFEST)
    if base.legacy_data is None:
        store.put(model, model_bytes(store, paths, base.manifest))
        store.put(record, base.raw)
        return
    # Adopting a bare model.bin: the first writer's copy stands (it was read before any commit).
    for loc, body in ((model, base.legacy_data), (record, base.raw)):
        with suppress(PreconditionFailed):
            store.put(loc, body, if_absent=True)


def sync_seed_copy(store: ObjectStore, paths: ProductionPaths) -> bool:
    """Make `model.bin` equal the live version's bytes; True when it is current."""
    seed = paths.model
    for _ in range(_SYNC_ATTEMPTS):
        info = store.head(seed)  # the copy's etag first, then the manifest: see the docstring
        live = read_live(store, paths)
        if live is None or live.etag is None:
            return False
        want = live.manifest.model
        if info is not None and info.size == want.size:
            try:
                if sha256_bytes(store.get(seed)) == want.sha256:
                    return True
            except ObjectNotFound:
                continue
        data = model_bytes(store, paths, live.manifest)
        try:
            if info is None:
                store.put(seed, data, if_absent=True)
            else:
                store.put(seed, data, if_match=info.etag)
        except PreconditionFailed:
            continue
        now = store.head(paths.manifest)
        if now is not None and now.etag == live.etag:
            return True
    return False


def read_production(store: ObjectStore, layout: Layout, symbol: str) -> LiveModel:
    """The live model for a consumer: `model.bin` when its sha256 matches the manifest, else
    the object the manifest names. Never returns bytes that disagree with the manifest."""
    paths = production_paths(layout, symbol)
    live = read_live(store, paths)
    if live is None or live.etag is None:
        raise NoProduction(
            f"{store.uri(paths.manifest)} does not exist: {symbol} has no "
            "managed production model; promote a job first"
        )
    want = live.manifest.model.sha256
    try:
        data = store.get(paths.model)
        if sha256_bytes(data) == want:
            return LiveModel(symbol, live.manifest, data, store.uri(paths.model))
    except ObjectNotFound:
        pass
    data = model_bytes(store, paths, live.manifest)
    return LiveModel(symbol, live.manifest, data, store.uri(paths.object(want)))


@dataclass(frozen=True)
class SymbolState:
    """What `production` shows for one symbol."""

    symbol: str
    uri: str
    live: ProductionManifest | None
    managed: bool
    """A manifest commits it (False for an adopted bare model.bin)."""
    seed_copy: str
    """`current`, `stale` or `missing`: the seed model.bin against the manifest."""
    history: tuple[ProductionManifest, ...]
    """Replaced versions, newest first."""

    def to_json(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "uri": self.uri,
            "live": self.live.model_dump(mode="json") if self.live else None,
            "managed": self.managed,
            "seed_copy": self.seed_copy,
            "history": [h.model_dump(mode="json") for h in self.history],
        }


def production_status(
    store: ObjectStore, layout: Layout, symbol: str | None = None
) -> list[SymbolState]:
    """What is live per symbol (source job, metrics, version) and its history, newest first."""
    symbols = [symbol] if symbol is not None else _symbols(store, layout)
    return [_status(store, production_paths(layout, s)) for s in symbols]


def _symbols(store: ObjectStore, layout: Layout) -> list[str]:
    root = layout.production_root
    found = set()
    for info in store.list(root):
        parts = info.loc.key[len(root.key) :].split("/")
        if len(parts) == 2 and parts[1] in (ProductionPaths.MANIFEST, ProductionPaths.MODEL):
            with suppress(ValueError):
                found.add(check_symbol(parts[0]))
    return sorted(found)


def _status(store: ObjectStore, paths: ProductionPaths) -> SymbolState:
    live = read_live(store, paths)
    uri = store.uri(paths.manifest)
    if live is None:
        return SymbolState(paths.symbol, uri, None, False, "missing", ())
    versions = set()
    for info in store.list(paths.history_dir):
        tail = info.loc.key[len(paths.history_dir.key) :].split("/")
        if len(tail) == 2 and tail[1] == paths.MANIFEST and tail[0].isdigit():
            versions.add(int(tail[0]))
    history = []
    for version in sorted(versions, reverse=True):
        loc = paths.history(version, paths.MANIFEST)
        history.append(_parse(store.get(loc), store.uri(loc)))
    seed = _seed_state(store, paths, live.manifest.model.sha256)
    return SymbolState(
        paths.symbol, uri, live.manifest, live.etag is not None, seed, tuple(history)
    )


def _seed_state(store: ObjectStore, paths: ProductionPaths, want: str) -> str:
    try:
        return "current" if sha256_bytes(store.get(paths.model)) == want else "stale"
    except ObjectNotFound:
        return "missing"
