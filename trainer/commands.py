"""The commands behind `quantlab-train`, as plain functions that return results or raise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trainer.data.plan import DatasetPlan, preflight, summary
from trainer.layout import Layout
from trainer.spec import JobSpec, load_spec
from trainer.storage import ObjectStore, default_store_root, open_store
from trainer.synth import SynthConfig, generate


@dataclass(frozen=True)
class Context:
    """What every command that touches data needs: the spec, its layout and its store."""

    spec: JobSpec
    layout: Layout
    store: ObjectStore


def open_context(
    spec_path: str, overrides: Sequence[str] = (), store_root: str | None = None
) -> Context:
    spec = load_spec(spec_path, overrides)
    return context_for(spec, store_root)


def context_for(spec: JobSpec, store_root: str | None = None) -> Context:
    root = store_root or default_store_root()
    store = open_store(root, read_only_buckets=[spec.storage.raw_bucket])
    return Context(spec, Layout(spec.storage), store)


def validate(ctx: Context, check_data: bool) -> dict[str, object]:
    """Validate the spec (done by loading it) and, with `check_data`, run the pre-flight."""
    result: dict[str, object] = {"job_id": ctx.spec.job_id, "spec": "ok"}
    if check_data:
        plan = preflight(ctx.spec.data, ctx.store, ctx.layout)
        result["data"] = summary(plan)
    return result


def check_data(ctx: Context) -> DatasetPlan:
    return preflight(ctx.spec.data, ctx.store, ctx.layout)


def generate_for_spec(ctx: Context, cfg: SynthConfig) -> int:
    """Write synthetic partitions for every symbol and date the spec names."""
    data = ctx.spec.data
    parts = generate(
        ctx.store, ctx.layout, data.exchange, data.stream, data.symbols, data.dates.resolve(), cfg
    )
    return len(parts)
