"""Dataset pre-flight: resolve every partition, read each `meta.json` and Parquet footer (never
the data), check them against each other and the spec, and return the plan the loader reads."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from trainer.data.split import SplitBounds, split_bounds
from trainer.errors import DataError, ObjectNotFound, StorageError, StoreUnavailable
from trainer.spec.dates import day_bounds_ms
from trainer.spec.sections import DataSpec
from trainer.store.base import Loc, ObjectStore
from trainer.store.layout import Layout, Partition
from trainer.store.records import DatasetFingerprint, PartitionFingerprint, PartitionMeta

FOOTER_READ = 64 << 10
"""Bytes read from the end of a Parquet file to find its footer in one request."""
PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class RowGroup:
    index: int
    rows: int
    ts_min: int | None
    ts_max: int | None
    """From the Parquet column statistics; None when the writer kept none."""


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
        meta_raw = store.get(meta_loc)
    except ObjectNotFound:
        if store.head(data_loc) is None:
            return _Footer(
                None,
                None,
                [
                    f"date {part.date}, symbol {part.symbol}: partition "
                    f"missing ({where} has no data.parquet nor meta.json)"
                ],
            )
        return _Footer(None, None, [f"{where}: meta.json missing"])
    except StoreUnavailable:
        raise  # no credentials, no endpoint: one infrastructure error, not one per partition
    except StorageError as exc:
        return _Footer(None, None, [f"{where}: {exc}"])
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
            md, footer_sha256 = _read_footer(handle, size)
            schema = md.schema.to_arrow_schema()
    except FileNotFoundError:
        return _Footer(None, None, [f"{where}: data.parquet missing"])
    except (OSError, ValueError, pa.ArrowException, StorageError) as exc:
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
    groups = tuple(_row_group(md, i, data.timestamp_column) for i in range(md.num_row_groups))
    problems += _stamps_inside(md, groups, meta, data.timestamp_column, where)
    if data.window > 1:
        problems += _out_of_order(groups, f"{where}: date {part.date}, symbol {part.symbol}")
    info = PartitionInfo(part, data_loc, meta, md.num_rows, size, groups, md, footer_sha256)
    return _Footer(info, schema, problems)


def _out_of_order(groups: tuple[RowGroup, ...], where: str) -> list[str]:
    """Windows take consecutive rows as the recent past, so a partition's rows must be in
    time order: row-group statistics that go back prove they are not (the loader checks the
    rows inside each row group it reads)."""
    known = [rg for rg in groups if rg.rows and rg.ts_min is not None and rg.ts_max is not None]
    for prev, rg in itertools.pairwise(known):
        if rg.ts_min is not None and prev.ts_max is not None and rg.ts_min < prev.ts_max:
            return [
                f"{where}: timestamps go back from row group {prev.index} (up to "
                f"{prev.ts_max}) to row group {rg.index} (from {rg.ts_min}); data.window "
                "needs each partition's rows in time order: sort them by timestamp"
            ]
    return []


def _read_footer(handle: pa.NativeFile, size: int) -> tuple[pq.FileMetaData, str]:
    """The Parquet footer, parsed, and the sha256 of its bytes: one read of the file's tail
    (two when the footer is longer than FOOTER_READ)."""
    tail = handle.read_at(min(size, FOOTER_READ), max(0, size - FOOTER_READ))
    if len(tail) < 12 or tail[-4:] != PARQUET_MAGIC:
        raise ValueError("not a Parquet file: it does not end with PAR1")
    length = int.from_bytes(tail[-8:-4], "little")
    if length + 12 > size:
        raise ValueError(f"the footer length {length} does not fit in {size} bytes")
    if length + 8 > len(tail):
        tail = handle.read_at(length + 8, size - length - 8)
    footer = tail[len(tail) - length - 8 :]
    return pq.read_metadata(pa.BufferReader(footer)), hashlib.sha256(footer).hexdigest()


def _stamps_inside(
    md: pq.FileMetaData,
    groups: tuple[RowGroup, ...],
    meta: PartitionMeta,
    ts_col: str,
    where: str,
) -> list[str]:
    """Every row group's timestamp statistics inside meta.json's `ts_min..ts_max` (itself
    inside the date), and no null timestamp: a day file holding another day's rows, or rows
    with no time, is refused before anything is read (the loader checks the rows it reads)."""
    problems = []
    bad = [g for g in groups if g.rows and g.ts_min is not None and g.ts_max is not None]
    bad = [g for g in bad if g.ts_min < meta.ts_min or g.ts_max > meta.ts_max]  # type: ignore[operator]
    if bad:
        g = bad[0]
        problems.append(
            f"{where}: row group {g.index} holds timestamps {g.ts_min}..{g.ts_max}, outside "
            f"meta.json's ts_min..ts_max {meta.ts_min}..{meta.ts_max} for date {meta.date}"
            + (f" ({len(bad)} row groups in all)" if len(bad) > 1 else "")
        )
    nulls = 0
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        for c in range(rg.num_columns):
            col = rg.column(c)
            if col.path_in_schema == ts_col and col.is_stats_set and col.statistics.null_count:
                nulls += col.statistics.null_count
    if nulls:
        problems.append(f"{where}: {nulls} null timestamp(s) in column {ts_col!r}")
    return problems


def _row_group(md: pq.FileMetaData, index: int, ts_col: str) -> RowGroup:
    rg = md.row_group(index)
    ts_min = ts_max = None
    for c in range(rg.num_columns):
        col = rg.column(c)
        if col.path_in_schema == ts_col and col.is_stats_set and col.statistics.has_min_max:
            ts_min, ts_max = int(col.statistics.min), int(col.statistics.max)
    return RowGroup(index, rg.num_rows, ts_min, ts_max)


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
