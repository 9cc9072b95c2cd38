"""The data a sweep's trials share: one pre-flight and one decoded copy per data section.

Trials whose data sections are equal (the same partitions, split, columns and cache size)
get the same plan, the same open files, the same block cache on the device, the same
feature statistics and the same validation rows, so the second trial reads no byte of the
dataset again: once the cache holds the split, every epoch of every later trial is served
from it. A trial with another data section gets its own reads, shared in turn."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field

import torch

from trainer.data.plan import DatasetPlan, preflight
from trainer.job.identity import Resolved, resolve_with
from trainer.job.prepare import DataPart, read_data
from trainer.spec import JobSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout
from trainer.train.distributed import Ranks

log = logging.getLogger("quantlab.sweep")


@dataclass
class _Section:
    lock: threading.Lock = field(default_factory=threading.Lock)
    plan: DatasetPlan | None = None
    data: DataPart | None = None


class SharedSections:
    """Plans and reads keyed by data section; safe for trials running side by side."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.reads = 0
        """Data sections read from the store so far."""
        self._sections: dict[str, _Section] = {}
        self._lock = threading.Lock()

    def _section(self, spec: JobSpec, dry_run: bool = False) -> _Section:
        data = spec.data.model_dump(mode="json", exclude={"fingerprint"})
        key = json.dumps([data, spec.storage.model_dump(mode="json"), dry_run], sort_keys=True)
        with self._lock:
            return self._sections.setdefault(key, _Section())

    def plan(self, spec: JobSpec) -> DatasetPlan:
        """The pre-flight of the spec's data section, made once."""
        section = self._section(spec)
        with section.lock:
            if section.plan is None:
                section.plan = preflight(spec.data, self.store, Layout.of(spec.storage))
            return section.plan

    def resolve(self, spec: JobSpec) -> Resolved:
        plan = self.plan(spec)
        return Resolved(resolve_with(spec, plan), plan)

    def data(
        self, spec: JobSpec, plan: DatasetPlan, device: torch.device, ranks: Ranks, dry_run: bool
    ) -> DataPart:
        section = self._section(spec, dry_run)
        with section.lock:
            if section.data is None:
                section.data = read_data(spec, self.store, plan, device, ranks, dry_run)
                self.reads += 1
            else:
                log.info("data: shared with an earlier trial, nothing read again")
            return section.data

    def close(self) -> None:
        """Close the open files and drop the caches (their memory goes back)."""
        with self._lock:
            sections, self._sections = list(self._sections.values()), {}
        for section in sections:
            if section.data is not None:
                section.data.files.close()
                if section.data.cache is not None:
                    section.data.cache.clear()
