"""Dataset pre-flight: resolve every partition, read each `meta.json` and Parquet footer (never
the data), check them against each other and the spec, and return the plan the loader reads."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from trainer.data.coverage import missing_ranges, rows_to_use
from trainer.data.footers import (
    RowGroup,
    out_of_order,
    read_footer,
    row_groups,
    span_is_exact,
    stamps_inside,
)
from trainer.data.split import SplitBounds, split_bounds
from trainer.errors import DataError, ObjectNotFound, StorageError
from trainer.spec.dates import day_bounds_ms
from trainer.spec.sections import DataSpec
from trainer.store.base import Loc, ObjectStore, store_failure
from trainer.store.layout import Layout, Partition
from trainer.store.records import DatasetFingerprint, PartitionFingerprint, PartitionMeta


@dataclass(frozen=True)
class PartitionInfo:
    part: Partition
    data: Loc
    meta: PartitionMeta
    rows: int
    bytes: int
    row_groups: tuple[RowGroup, ...]
    footer: pq.FileMetaData = field(compare=False, repr=False)
    """The parsed Parquet footer, handed to every reader so that none fetches it again."""
    footer_sha256: str = ""
    """sha256 of the footer's bytes as stored: row groups, sizes and column statistics,
    so rewritten data with the same row count still reads as different data."""


@dataclass(frozen=True)
class DatasetPlan:
    """Everything the loader and the job need to know about the data, footers only."""

    partitions: tuple[PartitionInfo, ...]
    features: tuple[str, ...]
    label: str
    timestamp: str
    label_horizon_sec: int
    config_hash: str
    featureset: str
    bounds: SplitBounds
    ts_min: int
    ts_max: int
    estimates: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions)

    def fingerprint(self) -> DatasetFingerprint:
        """The dataset's identity, stored with the model (`dataset.json`); its digest is part
        of a derived job id."""
        return DatasetFingerprint(
            featureset=self.featureset,
            config_hash=self.config_hash,
            label_horizon_sec=self.label_horizon_sec,
            features=self.features,
            label=self.label,
            timestamp=self.timestamp,
            val_start_ms=self.bounds.val_start_ms,
            train_end_ms=self.bounds.train_end_ms,
            partitions=tuple(
                PartitionFingerprint(
                    uri=str(p.data),
                    rows=p.rows,
                    bytes=p.bytes,
                    config_hash=p.meta.config_hash,
                    footer_sha256=p.footer_sha256,
                )
                for p in self.partitions
            ),
        )


@dataclass
class _Footer:
    info: PartitionInfo | None
    schema: pa.Schema | None
    problems: list[str]
    missing: Partition | None = None
    """The partition has neither file: reported with the other missing ones, as ranges."""


def preflight(data: DataSpec, store: ObjectStore, layout: Layout, workers: int = 8) -> DatasetPlan:
    """Check every partition the spec names; raise DataError listing every problem found."""
    dates = data.dates.resolve()
    parts = [
        Partition(data.exchange, data.stream, symbol, date)
        for symbol in data.symbols
        for date in dates
    ]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        footers = list(pool.map(lambda p: _inspect(p, data, store, layout), parts))

    problems = [msg for f in footers for msg in f.problems]
    missing = [f.missing for f in footers if f.missing is not None]
    problems += missing_ranges(missing, lambda p: store.uri(layout.feature_dir(p, data.featureset)))
    found = [(f.info, f.schema) for f in footers if f.info is not None and f.schema is not None]
    problems += _agree(found, data, layout, store)
    if problems or not found:
        raise DataError(
            f"dataset pre-flight failed: {len(problems)} problem(s) in {len(parts)} partition(s)",
            problems or ["no partition could be read"],
        )

    infos = [info for info, _ in found]
    first_meta = infos[0].meta
    features = _resolve_features(data, found[0][1])
    ts_min = min(i.meta.ts_min for i in infos)
    ts_max = max(i.meta.ts_max for i in infos)
    horizon = first_meta.label_horizon_sec
    try:
        bounds = split_bounds(data.split, dates, ts_min, ts_max, horizon)
    except ValueError as exc:
        raise DataError("dataset pre-flight failed", [str(exc)]) from None
    problems = rows_to_use(infos, data, features, bounds, horizon, ts_min, ts_max)
    if problems:
        raise DataError("dataset pre-flight failed: nothing to train on", problems)
    plan = DatasetPlan(
        partitions=tuple(infos),
        features=features,
        label=data.label_column,
        timestamp=data.timestamp_column,
        label_horizon_sec=horizon,
        config_hash=first_meta.config_hash,
        featureset=data.featureset,
        bounds=bounds,
        ts_min=ts_min,
        ts_max=ts_max,
    )
    plan.estimates.update(_estimate_split(plan))
    return plan


def _inspect(part: Partition, data: DataSpec, store: ObjectStore, layout: Layout) -> _Footer:
    data_loc = layout.feature_data(part, data.featureset)
    meta_loc = layout.feature_meta(part, data.featureset)
    where = store.uri(layout.feature_dir(part, data.featureset))
    problems: list[str] = []
    try:
        meta_raw = store.get_small(meta_loc)
    except ObjectNotFound:
        if store.head(data_loc) is None:
            return _Footer(None, None, [], missing=part)
        return _Footer(None, None, [f"{where}: meta.json missing"])
    try:
        raw = json.loads(meta_raw)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return _Footer(None, None, [f"{where}meta.json: not valid JSON ({exc})"])

    expected = {"featureset_version": data.featureset, "symbol": part.symbol, "date": part.date}
    for key, want in expected.items():
        if str(raw.get(key)) != want:
            problems.append(f"{where}: meta.json {key}={raw.get(key)!r}, the path says {want!r}")
    required = ("rows", "ts_min", "ts_max", "label_horizon_sec", "config_hash")
    missing = [k for k in required if k not in raw]
    if missing:
        problems.append(f"{where}: meta.json lacks {', '.join(missing)}")
        return _Footer(None, None, problems)
    try:
        meta = PartitionMeta.model_validate({**raw, **expected})
    except ValidationError as exc:
        wrong = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return _Footer(None, None, [*problems, f"{where}: meta.json {'; '.join(wrong)}"])

    try:
        fs = store.arrow_fs()
        # Opening learns the size (one HEAD on S3); the footer is the one other request.
        with fs.open_input_file(store.arrow_path(data_loc)) as handle:
            size = handle.size()
            md, footer_sha256 = read_footer(handle, size)
            schema = md.schema.to_arrow_schema()
    except FileNotFoundError:
        return _Footer(None, None, [f"{where}: data.parquet missing"])
    except (OSError, ValueError, pa.ArrowException, StorageError) as exc:
        if (failed := store_failure(exc, store.uri(data_loc))) is not None:
            raise failed from None  # the store, not the data: exit 8, never a data error
        return _Footer(None, None, [f"{where}data.parquet: unreadable Parquet footer ({exc})"])

    if meta.rows != md.num_rows:
        problems.append(
            f"{where}: meta.json rows={meta.rows} but data.parquet holds {md.num_rows} rows"
        )
    day_first, day_last = day_bounds_ms(part.date)
    ts_lo, ts_hi = meta.ts_min, meta.ts_max
    if not (day_first <= ts_lo <= ts_hi <= day_last):
        problems.append(
            f"{where}: ts_min..ts_max {ts_lo}..{ts_hi} is not inside date {part.date} "
            f"({day_first}..{day_last})"
        )
    groups, nulls = row_groups(md, data.timestamp_column)
    problems += stamps_inside(groups, nulls, meta, data.timestamp_column, where)
    problems += span_is_exact(groups, meta, where)
    if data.window > 1:
        problems += out_of_order(groups, f"{where}: date {part.date}, symbol {part.symbol}")
    info = PartitionInfo(part, data_loc, meta, md.num_rows, size, groups, md, footer_sha256)
    return _Footer(info, schema, problems)


def _agree(
    found: list[tuple[PartitionInfo, pa.Schema]],
    data: DataSpec,
    layout: Layout,
    store: ObjectStore,
) -> list[str]:
    """Cross-partition checks: one horizon, one config hash, one schema with the columns."""
    problems: list[str] = []
    if not found:
        return problems
    for key in ("label_horizon_sec", "config_hash"):
        values: dict[str, list[str]] = {}
        for info, _ in found:
            values.setdefault(str(getattr(info.meta, key)), []).append(info.part.date)
        if len(values) > 1:
            majority = max(values, key=lambda v: len(values[v]))
            for value, _dates in values.items():
                if value == majority:
                    continue
                for info, _ in found:
                    if str(getattr(info.meta, key)) == value:
                        problems.append(
                            f"{store.uri(layout.feature_dir(info.part, data.featureset))}: "
                            f"{key}={value}, "
                            f"the other partitions have {majority}"
                        )
    # The schema most partitions share is the reference; the odd ones out are reported.
    counts: dict[str, int] = {}
    for _, schema in found:
        counts[str(schema)] = counts.get(str(schema), 0) + 1
    ref_schema = next(s for _, s in found if counts[str(s)] == max(counts.values()))
    needed = _needed_columns(data)
    for info, schema in found:
        where = store.uri(layout.feature_dir(info.part, data.featureset))
        column_problems = []
        for name in needed:
            if name not in schema.names:
                column_problems.append(f"{where}: no {_role(name, data)} column {name!r}")
            elif not _numeric(schema.field(name).type):
                column_problems.append(
                    f"{where}: column {name!r} is {schema.field(name).type}, not numeric"
                )
        problems += column_problems
        if not column_problems and not schema.equals(ref_schema):
            problems.append(
                f"{where}: schema differs from the others: {_schema_diff(ref_schema, schema)}"
            )
    return problems


def _needed_columns(data: DataSpec) -> list[str]:
    cols = [data.timestamp_column, data.label_column]
    cols += list(data.features) if data.features != "auto" else []
    return cols


def _resolve_features(data: DataSpec, schema: pa.Schema) -> tuple[str, ...]:
    if data.features != "auto":
        return tuple(data.features)
    skip = {data.timestamp_column, data.label_column}
    return tuple(f.name for f in schema if f.name not in skip and _numeric(f.type))


def _role(name: str, data: DataSpec) -> str:
    if name == data.label_column:
        return "label"
    if name == data.timestamp_column:
        return "timestamp"
    return "feature"


def _numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t))


def _schema_diff(ref: pa.Schema, other: pa.Schema) -> str:
    out = []
    for f in ref:
        if f.name in other.names and not other.field(f.name).type.equals(f.type):
            out.append(f"{f.name} is {other.field(f.name).type}, not {f.type}")
    extra = [n for n in other.names if n not in ref.names]
    gone = [n for n in ref.names if n not in other.names]
    if extra:
        out.append(f"extra columns {extra}")
    if gone:
        out.append(f"missing columns {gone}")
    return "; ".join(out)


def _estimate_split(plan: DatasetPlan) -> dict[str, int]:
    """Rows expected in train and validation, from row-group timestamp statistics (rows in a
    group straddling a cut are counted pro rata, rounded up; non-finite rows are counted)."""
    train = val = 0
    b = plan.bounds
    for p in plan.partitions:
        for rg in p.row_groups:
            lo = rg.ts_min if rg.ts_min is not None else p.meta.ts_min
            hi = rg.ts_max if rg.ts_max is not None else p.meta.ts_max
            span = max(hi - lo + 1, 1)
            train += math.ceil(rg.rows * _share(lo, hi, None, b.train_end_ms, span))
            val += math.ceil(rg.rows * _share(lo, hi, b.val_start_ms, None, span))
    return {"train_rows": train, "val_rows": val}


def _share(lo: int, hi: int, start: int | None, end: int | None, span: int) -> float:
    a = lo if start is None else max(lo, start)
    z = hi + 1 if end is None else min(hi + 1, end)
    return max(z - a, 0) / span


def summary(plan: DatasetPlan) -> dict[str, Any]:
    """The pre-flight summary printed by `validate`."""
    dates = sorted({p.part.date for p in plan.partitions})
    return {
        "partitions": len(plan.partitions),
        "rows": plan.rows,
        "bytes": plan.bytes,
        "date_span": f"{dates[0]}..{dates[-1]}" if dates else "",
        "symbols": sorted({p.part.symbol for p in plan.partitions}),
        "features": len(plan.features),
        "label_horizon_sec": plan.label_horizon_sec,
        "config_hash": plan.config_hash,
        "train_rows_expected": plan.estimates.get("train_rows", 0),
        "val_rows_expected": plan.estimates.get("val_rows", 0),
    }
