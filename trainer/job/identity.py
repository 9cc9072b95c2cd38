"""A job's identity: the spec resolved against its dataset, and the data a committed job
must still have.

A derived job id hashes the resolved spec, and resolving sets `data.fingerprint`, the digest
of the pre-flight's `DatasetFingerprint` (every partition's rows, size, footer bytes and
`config_hash`, the features and the split), and `code.sha256`, the hash of the researcher's
packed code. So the same spec on the same data is the same job
("already done"), and new data under the same spec is a new job. A spec that arrives resolved
(the container's copy of the launcher's) must still match its data. An explicit `job.id`
names one job whatever the data, so `check_committed` refuses to report a committed one as
done when its data has changed since: it names what changed and how to proceed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trainer.data.plan import DatasetPlan, preflight
from trainer.errors import DatasetChanged
from trainer.model.code import resolve_code
from trainer.spec import JobSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths, Layout
from trainer.store.records import (
    DatasetFingerprint,
    JobManifest,
    PartitionFingerprint,
    read_record,
)

MAX_CHANGES = 20
"""Changes listed by name; the rest are counted."""
_PARTITION = re.compile(r"symbol=([^/]+)/date=(\d{8})")


@dataclass(frozen=True)
class Resolved:
    """A spec whose job id is known, and the pre-flight plan it was resolved with."""

    spec: JobSpec
    plan: DatasetPlan

    @property
    def job_id(self) -> str:
        return self.spec.job_id


def resolve(spec: JobSpec, store: ObjectStore) -> Resolved:
    """Pre-flight the spec's dataset (DataError listing every problem) and resolve the spec
    with its fingerprint (DatasetChanged when the spec was resolved with other data)."""
    plan = preflight(spec.data, store, Layout.of(spec.storage))
    return Resolved(resolve_with(spec, plan), plan)


def resolve_with(spec: JobSpec, plan: DatasetPlan) -> JobSpec:
    """`spec` with `data.fingerprint` set to `plan`'s, and `code.sha256` to its code's."""
    digest = plan.fingerprint().digest()
    given = spec.data.fingerprint
    if given is not None and given != digest:
        raise DatasetChanged(
            f"the dataset of job {spec.job_id} changed after the job was launched; nothing "
            "was trained on it",
            [
                f"data.fingerprint: the spec says {given[:12]}…, the data now gives {digest[:12]}…",
                "launch the spec again: the new data is then a new job",
            ],
        )
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"fingerprint": digest})})
    return resolve_code(spec)


def check_committed(
    store: ObjectStore, paths: JobPaths, manifest: JobManifest, plan: DatasetPlan
) -> None:
    """A committed job is "already done" only on the data it was committed with:
    DatasetChanged naming every difference otherwise."""
    recorded = manifest.dataset.fingerprint
    current = plan.fingerprint()
    if recorded is None or recorded == current.digest():
        return
    before = read_record(store, paths.dataset, DatasetFingerprint)
    changes = describe_changes(before, current) if before is not None else []
    if len(changes) > MAX_CHANGES:
        changes = [*changes[:MAX_CHANGES], f"… and {len(changes) - MAX_CHANGES} more changes"]
    raise DatasetChanged(
        f"job {paths.job_id} is committed with other data than the spec's dataset has now; its "
        "model was not trained on today's data. To train on it, drop `job.id` (the id is then "
        "derived from the spec and the data) or give a new `job.id`; to use the committed "
        "model, restore the data it was trained on",
        changes or [f"{store.uri(paths.dataset)}: no readable record of the data"],
    )


def describe_changes(before: DatasetFingerprint, after: DatasetFingerprint) -> list[str]:
    """What differs between two fingerprints, one line each, partitions by symbol and date."""
    changes = [
        f"{name}: {getattr(before, name)!r} → {getattr(after, name)!r}"
        for name in ("featureset", "config_hash", "label_horizon_sec", "label", "timestamp")
        if getattr(before, name) != getattr(after, name)
    ]
    if before.features != after.features:
        changes.append(f"features: {len(before.features)} → {len(after.features)} columns")
    old = {p.uri: p for p in before.partitions}
    new = {p.uri: p for p in after.partitions}
    for uri in sorted(old.keys() - new.keys()):
        changes.append(f"{_name(uri)}: no longer in the dataset")
    for uri in sorted(new.keys() - old.keys()):
        changes.append(f"{_name(uri)}: new in the dataset ({new[uri].rows:,} rows)")
    for uri in sorted(old.keys() & new.keys()):
        if old[uri] != new[uri]:
            changes.append(f"{_name(uri)}: {_partition_change(old[uri], new[uri])}")
    if (before.val_start_ms, before.train_end_ms) != (after.val_start_ms, after.train_end_ms):
        changes.append("the train/validation split moved")
    return changes


def _name(uri: str) -> str:
    found = _PARTITION.search(uri)
    return f"date {found.group(2)}, symbol {found.group(1)}" if found else uri


def _partition_change(old: PartitionFingerprint, new: PartitionFingerprint) -> str:
    parts = []
    if old.rows != new.rows:
        parts.append(f"{old.rows:,} → {new.rows:,} rows")
    if old.bytes != new.bytes:
        parts.append(f"{old.bytes:,} → {new.bytes:,} bytes")
    if old.config_hash != new.config_hash:
        parts.append(f"config_hash {old.config_hash} → {new.config_hash}")
    return ", ".join(parts) or "rewritten with other values (same rows and size)"
