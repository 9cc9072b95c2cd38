"""What one partition's Parquet footer proves before a byte of data is read: its row groups
with their timestamp statistics and the columns that hold no finite value, timestamps inside
meta.json's span (itself the rows' own span), no null timestamp, and time order."""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.store.records import PartitionMeta

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
    no_finite: frozenset[str] = frozenset()
    """Numeric columns whose statistics prove they hold no finite value here: every value
    NaN or null (no minimum nor maximum kept), or all of one infinity."""


NUMERIC = frozenset({"FLOAT", "DOUBLE", "INT32", "INT64"})


def row_groups(md: pq.FileMetaData, ts_col: str) -> tuple[tuple[RowGroup, ...], int]:
    """Every row group's summary, and how many null timestamps the statistics count. Each
    column's path and type come from the schema, once, not from every row group."""
    schema = md.schema
    columns = []
    for c in range(md.num_columns):
        column = schema.column(c)
        numeric = column.physical_type in NUMERIC
        if numeric or column.path == ts_col:
            columns.append((c, column.path, numeric))
    groups, nulls = [], 0
    for index in range(md.num_row_groups):
        rg = md.row_group(index)
        ts_min = ts_max = None
        no_finite = set()
        for c, path, numeric in columns:
            col = rg.column(c)
            if not col.is_stats_set:
                continue
            stats = col.statistics
            if path == ts_col:
                nulls += stats.null_count
            if not rg.num_rows:
                continue
            if not stats.has_min_max:
                if numeric:
                    no_finite.add(path)
                continue
            low = stats.min
            if path == ts_col:
                ts_min, ts_max = int(low), int(stats.max)
            if numeric and isinstance(low, float) and math.isinf(low) and stats.max == low:
                no_finite.add(path)
        groups.append(RowGroup(index, rg.num_rows, ts_min, ts_max, frozenset(no_finite)))
    return tuple(groups), nulls


def read_footer(handle: pa.NativeFile, size: int) -> tuple[pq.FileMetaData, str]:
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


def stamps_inside(
    groups: tuple[RowGroup, ...], nulls: int, meta: PartitionMeta, ts_col: str, where: str
) -> list[str]:
    """Every row group's timestamp statistics inside meta.json's `ts_min..ts_max` (itself
    inside the date), and no null timestamp (`nulls`, as the statistics count them): a day
    file holding another day's rows, or rows with no time, is refused before anything is
    read (the loader checks the rows it reads)."""
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
    if nulls:
        problems.append(f"{where}: {nulls} null timestamp(s) in column {ts_col!r}")
    return problems


def span_is_exact(groups: tuple[RowGroup, ...], meta: PartitionMeta, where: str) -> list[str]:
    """meta.json's `ts_min..ts_max` is the rows' own span, as the row-group statistics give
    it: a fractional split cuts the span meta.json states, so a wider one moves the cut."""
    known = [g for g in groups if g.rows]
    if not known or any(g.ts_min is None or g.ts_max is None for g in known):
        return []
    lo = min(g.ts_min for g in known if g.ts_min is not None)
    hi = max(g.ts_max for g in known if g.ts_max is not None)
    if (lo, hi) == (meta.ts_min, meta.ts_max) or lo < meta.ts_min or hi > meta.ts_max:
        return []  # exact, or reported already as rows outside meta.json's span
    return [
        f"{where}: meta.json ts_min..ts_max {meta.ts_min}..{meta.ts_max}, but the rows of "
        f"data.parquet span {lo}..{hi}"
    ]


def out_of_order(groups: tuple[RowGroup, ...], where: str) -> list[str]:
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
