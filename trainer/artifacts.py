"""Job artifacts: upload, the manifest that commits them, verification, failure records."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import __version__
from trainer.errors import ObjectNotFound, PreconditionFailed, StorageError, TrainerError
from trainer.layout import Layout, Loc
from trainer.storage.base import ObjectStore

MANIFEST = "manifest.json"
FAILURE = "failure.json"


class VerificationError(TrainerError):
    """A committed artifact does not match its manifest (size or sha256)."""


class AlreadyCommitted(PreconditionFailed):
    """The job id already has a manifest; it is never overwritten."""


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Committed:
    manifest: dict[str, Any]
    uri: str


def commit(
    store: ObjectStore, layout: Layout, job_id: str, files: list[Path], info: dict[str, Any]
) -> Committed:
    """Upload `files` under `ml-artifacts/<job_id>/`, then write the manifest last and only if
    absent: its presence is what "complete" means."""
    manifest_loc = layout.job_file(job_id, MANIFEST)
    if store.exists(manifest_loc):
        raise AlreadyCommitted(f"{store.uri(manifest_loc)} exists: job {job_id} is committed")
    listed = []
    for path in files:
        store.upload(layout.job_file(job_id, path.name), path)
        listed.append({"name": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = {
        "job_id": job_id,
        **info,
        "code_version": __version__,
        "committed_at": utc_now(),
        "files": listed,
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    try:
        store.put(manifest_loc, body, if_absent=True)
    except PreconditionFailed:
        raise AlreadyCommitted(
            f"{store.uri(manifest_loc)} appeared while committing: another run of job {job_id} "
            "won; its artifacts stand"
        ) from None
    return Committed(manifest, store.uri(layout.job_dir(job_id)))


def read_manifest(store: ObjectStore, layout: Layout, job_id: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(store.get(layout.job_file(job_id, MANIFEST)))
        return data
    except ObjectNotFound:
        return None


def verify(store: ObjectStore, layout: Layout, job_id: str, workdir: Path) -> dict[str, Any]:
    """Download every listed file and check its size and sha256; returns the manifest."""
    manifest = read_manifest(store, layout, job_id)
    if manifest is None:
        raise VerificationError(
            f"{store.uri(layout.job_file(job_id, MANIFEST))} does not exist: the job is not "
            "committed"
        )
    for entry in manifest["files"]:
        loc: Loc = layout.job_file(job_id, entry["name"])
        local = workdir / entry["name"]
        try:
            store.download(loc, local)
        except ObjectNotFound:
            raise VerificationError(
                f"{store.uri(loc)} is listed in the manifest but missing"
            ) from None
        size, digest = local.stat().st_size, sha256_file(local)
        if size != entry["size"] or digest != entry["sha256"]:
            raise VerificationError(
                f"{store.uri(loc)} does not match the manifest: size {size} vs {entry['size']}, "
                f"sha256 {digest[:12]}… vs {entry['sha256'][:12]}…"
            )
    return manifest


def write_failure(
    store: ObjectStore, layout: Layout, job_id: str, reason: str, error: str, info: dict[str, Any]
) -> str | None:
    """Record why a job failed. Best effort: a failure to record is logged, not raised over
    the original error. Returns the record's URI when written."""
    loc = layout.job_file(job_id, FAILURE)
    record = {
        "job_id": job_id,
        "reason": reason,
        "error": error,
        "failed_at": utc_now(),
        "code_version": __version__,
        **info,
    }
    try:
        store.put(loc, json.dumps(record, indent=2, sort_keys=True).encode())
    except StorageError:
        return None
    return store.uri(loc)
