"""Damaged datasets for the property suite, written with plain pyarrow, numpy and json: the
files the trainer reads never go through the trainer's own code.

A case is a clean dataset (a few symbols and days, small row groups) plus a few damages. Each
damage says what the runner must do with it (`refuse`, `accept`, or `either` where both are
right) and what a refusal must name: the spec field, or the partition."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

Expect = Literal["refuse", "accept", "either"]
FEATURES = ("f0", "f1", "f2")
FIRST_DAY = dt.date(2025, 12, 1)
COMPACT, ARTIFACTS = "quantlab-compact", "quantlab-artifacts"
EXIT_SPEC, EXIT_DATA = 2, 3


def day_ms(date: str) -> tuple[int, int]:
    start = dt.datetime.strptime(date, "%Y%m%d").replace(tzinfo=dt.UTC)
    first = int(start.timestamp() * 1000)
    return first, first + 86_400_000 - 1


@dataclass
class Part:
    """One partition as it will be written: row groups, meta.json, which files exist."""

    symbol: str
    date: str
    groups: list[pa.Table]
    meta: dict[str, Any] | bytes
    """The meta.json document, or raw bytes written as they are."""
    raw_data: bytes | None = None
    """data.parquet's bytes as they are (a damaged file), instead of the row groups."""
    has_data: bool = True
    has_meta: bool = True

    @property
    def hive(self) -> str:
        return (
            f"features/featureset=v1/exchange=binance/stream=bbo/symbol={self.symbol}/"
            f"date={self.date}"
        )

    def table(self) -> pa.Table:
        return pa.concat_tables(self.groups) if self.groups else pa.table({})

    def refresh_meta(self) -> None:
        """meta.json made to agree with the rows again (after a damage that should stand)."""
        assert isinstance(self.meta, dict)
        table = self.table()
        ts = table.column("ts").to_numpy()
        self.meta.update(rows=table.num_rows, ts_min=int(ts.min()), ts_max=int(ts.max()))


@dataclass
class Dataset:
    symbols: tuple[str, ...]
    dates: tuple[str, ...]
    parts: dict[tuple[str, str], Part]
    horizon: int

    def write(self, root: Path) -> None:
        """Under `root` as the local store lays out `<bucket>/<key>`."""
        for part in self.parts.values():
            folder = root / COMPACT / part.hive
            folder.mkdir(parents=True, exist_ok=True)
            if part.has_data:
                if part.raw_data is not None:
                    (folder / "data.parquet").write_bytes(part.raw_data)
                else:
                    write_groups(folder / "data.parquet", part.groups)
            if part.has_meta:
                body = part.meta if isinstance(part.meta, bytes) else json.dumps(part.meta).encode()
                (folder / "meta.json").write_bytes(body)


def write_groups(path: Path, groups: list[pa.Table]) -> None:
    """One Parquet row group per table, in order (an empty table is an empty row group)."""
    schema = groups[0].schema
    with pq.ParquetWriter(path, schema) as writer:
        for group in groups:
            writer.write_table(group.cast(schema) if group.schema != schema else group)


def make_part(symbol: str, date: str, rows: int, group_rows: int, horizon: int, seed: int) -> Part:
    """A clean day: sorted timestamps inside the day, three float32 features, a label that
    follows `f0`, all finite."""
    rng = np.random.default_rng(seed)
    first, last = day_ms(date)
    ts = np.sort(rng.integers(first, last + 1, size=rows, dtype=np.int64))
    cols = {f: rng.standard_normal(rows).astype(np.float32) for f in FEATURES}
    label = (cols["f0"] + rng.standard_normal(rows)).astype(np.float32)
    table = pa.table({"ts": ts, **cols, "label": label})
    groups = [table.slice(i, group_rows) for i in range(0, rows, group_rows)]
    meta = {
        "featureset_version": "v1",
        "symbol": symbol,
        "date": date,
        "rows": rows,
        "ts_min": int(ts[0]),
        "ts_max": int(ts[-1]),
        "label_horizon_sec": horizon,
        "config_hash": "cafe0123",
    }
    return Part(symbol, date, groups, meta)


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    return clean(
        draw(st.sampled_from([("btcusdt",), ("btcusdt", "ethusdt")])),
        n_days=draw(st.integers(3, 4)),
        rows=draw(st.integers(90, 200)),
        group_rows=draw(st.integers(30, 70)),
        horizon=draw(st.sampled_from([0, 10, 600])),
    )


def clean(
    symbols: tuple[str, ...], n_days: int, rows: int, group_rows: int, horizon: int
) -> Dataset:
    dates = tuple((FIRST_DAY + dt.timedelta(days=i)).strftime("%Y%m%d") for i in range(n_days))
    parts = {
        (s, d): make_part(s, d, rows, group_rows, horizon, seed=i)
        for i, (s, d) in enumerate((s, d) for s in symbols for d in dates)
    }
    return Dataset(symbols, dates, parts, horizon)


# -- damages -------------------------------------------------------------------------------
@dataclass
class Damage:
    """One thing made wrong. `targets`: the words a refusal must contain one of (a spec
    field, a partition's date, a column). `codes`: the exit codes a refusal may have."""

    what: str
    """The class, for the report: `data: nan row group`, `meta: type`, `spec: range`..."""
    expect: Expect
    targets: tuple[str, ...]
    codes: frozenset[int]
    overrides: tuple[str, ...] = ()
    """`--set` items this damage adds."""
    spec_change: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)
    """A change to the spec file instead."""


DataDamage = Callable[[Dataset, Part, st.DrawFn], Damage]


def _column(part: Part, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    out = []
    for g in part.groups:
        i = g.schema.get_field_index(name)
        values = change(g.column(name).to_numpy(zero_copy_only=False).copy())
        out.append(g.set_column(i, name, pa.array(values, g.schema.field(name).type)))
    part.groups = out


def _named(part: Part) -> tuple[str, ...]:
    return (f"date={part.date}", f"date {part.date}")


def nan_row_group(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """A whole row group with a NaN label or feature: its rows are dropped, and counted."""
    gi = draw(st.integers(0, len(part.groups) - 1))
    col = draw(st.sampled_from(["label", *FEATURES]))
    g = part.groups[gi]
    values = g.column(col).to_numpy(zero_copy_only=False).copy()
    values[:] = np.nan
    part.groups[gi] = g.set_column(g.schema.get_field_index(col), col, pa.array(values))
    return Damage("data: all-NaN row group", "accept", (), frozenset())


def scattered_non_finite(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """NaN, inf or null values here and there in a label or feature."""
    col = draw(st.sampled_from(["label", *FEATURES]))
    kind = draw(st.sampled_from(["nan", "inf", "null"]))
    seed = draw(st.integers(0, 2**16))
    out = []
    for g in part.groups:
        rng = np.random.default_rng(seed + len(out))
        values = g.column(col).to_numpy(zero_copy_only=False).astype(np.float32)
        hit = rng.random(len(values)) < 0.2
        mask = None
        if kind == "null":
            mask = hit
        else:
            values[hit] = np.nan if kind == "nan" else np.inf
        arr = pa.array(values, pa.float32(), mask=mask)
        out.append(g.set_column(g.schema.get_field_index(col), col, arr))
    part.groups = out
    return Damage(f"data: scattered {kind}", "accept", (), frozenset())


def empty_row_group(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """A row group with no rows, anywhere in the file."""
    gi = draw(st.integers(0, len(part.groups)))
    part.groups.insert(gi, part.groups[0].slice(0, 0))
    return Damage("data: empty row group", "accept", (), frozenset())


def duplicated_rows(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """A row group written twice; meta.json counts it (accepted) or does not (refused)."""
    gi = draw(st.integers(0, len(part.groups) - 1))
    part.groups.insert(gi, part.groups[gi])
    if draw(st.booleans()):
        part.refresh_meta()
        return Damage("data: duplicated rows", "accept", (), frozenset())
    return Damage(
        "data: duplicated rows, meta.json not updated",
        "refuse",
        _named(part),
        frozenset({EXIT_DATA}),
    )


def shuffled_rows(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """Rows out of time order: one row per sample takes no order, so this stands."""
    table = part.table()
    order = np.random.default_rng(draw(st.integers(0, 99))).permutation(table.num_rows)
    table = table.take(pa.array(order))
    size = part.groups[0].num_rows
    part.groups = [table.slice(i, size) for i in range(0, table.num_rows, size)]
    return Damage("data: rows out of order", "accept", (), frozenset())


def shifted_timestamps(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """Some rows moved off the partition's day (the next one, a year on, before 1970's...),
    meta.json made to agree with them or not: never the partition's data."""
    shift = draw(st.sampled_from([86_400_000, -86_400_000, 3_600_000 * 30, 365 * 86_400_000]))
    gi = draw(st.integers(0, len(part.groups) - 1))
    g = part.groups[gi]
    ts = g.column("ts").to_numpy().copy() + shift
    part.groups[gi] = g.set_column(0, "ts", pa.array(ts, pa.int64()))
    if draw(st.booleans()):
        part.refresh_meta()
    return Damage("data: timestamps off the day", "refuse", _named(part), frozenset({EXIT_DATA}))


def null_timestamps(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    gi = draw(st.integers(0, len(part.groups) - 1))
    g = part.groups[gi]
    ts = g.column("ts").to_numpy()
    mask = np.zeros(len(ts), bool)
    mask[draw(st.integers(0, len(ts) - 1))] = True
    part.groups[gi] = g.set_column(0, "ts", pa.array(ts, pa.int64(), mask=mask))
    return Damage("data: null timestamp", "refuse", _named(part), frozenset({EXIT_DATA}))


def retyped_column(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """A column of another type in one partition: text, float64, int32, ts as floats."""
    col = draw(st.sampled_from(["ts", "label", *FEATURES]))
    kind = draw(st.sampled_from(["string", "float64", "int32"]))
    out = []
    for g in part.groups:
        values = g.column(col)
        if kind == "string":
            arr = pa.array([str(v) for v in values.to_pylist()], pa.string())
        elif kind == "float64":
            arr = values.cast(pa.float64())
        else:
            arr = pa.array(values.to_numpy(zero_copy_only=False).astype(np.int32), pa.int32())
        out.append(g.set_column(g.schema.get_field_index(col), col, arr))
    part.groups = out
    return Damage(f"data: {col} as {kind}", "refuse", (*_named(part), col), frozenset({EXIT_DATA}))


def missing_column(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    col = draw(st.sampled_from(["ts", "label", *FEATURES]))
    part.groups = [g.drop_columns([col]) for g in part.groups]
    return Damage("data: missing column", "refuse", (*_named(part), col), frozenset({EXIT_DATA}))


def extra_column(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    part.groups = [g.append_column("extra", pa.array(np.zeros(g.num_rows))) for g in part.groups]
    return Damage("data: extra column", "refuse", (*_named(part), "extra"), frozenset({EXIT_DATA}))


def missing_files(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    which = draw(st.sampled_from(["data", "meta", "both"]))
    part.has_data = which == "meta"
    part.has_meta = which == "data"
    return Damage(f"data: missing {which}", "refuse", _named(part), frozenset({EXIT_DATA}))


def garbage_parquet(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """data.parquet cut short, or not Parquet at all."""
    sink = io.BytesIO()
    write_groups(sink, part.groups)  # type: ignore[arg-type]
    body = sink.getvalue()
    cut = draw(st.integers(0, len(body) - 1))
    part.raw_data = draw(st.sampled_from([body[:cut], b"not parquet", body[:-4] + b"PAR0"]))
    return Damage("data: damaged parquet", "refuse", _named(part), frozenset({EXIT_DATA}))


def empty_partition(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """A day with no rows at all: a partition that can hold nothing to train on."""
    part.groups = [part.groups[0].slice(0, 0)]
    assert isinstance(part.meta, dict)
    part.meta["rows"] = 0
    return Damage("data: empty partition", "either", _named(part), frozenset({EXIT_DATA}))


WRONG_TYPES: tuple[Any, ...] = ("10", 10.5, True, None, [10], {"a": 1})


def meta_type(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    key = draw(st.sampled_from(["rows", "ts_min", "ts_max", "label_horizon_sec", "config_hash"]))
    value = draw(st.sampled_from(WRONG_TYPES))
    if key == "config_hash" and isinstance(value, str):
        value = 7
    assert isinstance(part.meta, dict)
    part.meta[key] = value
    return Damage("meta: wrong type", "refuse", (*_named(part), key), frozenset({EXIT_DATA}))


def meta_range(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    """A number out of its range, or contradicting the data or the path."""
    assert isinstance(part.meta, dict)
    m = part.meta
    choice = draw(
        st.sampled_from(
            [
                "horizon<0",
                "horizon>day",
                "rows",
                "ts_min",
                "ts_max",
                "ts_wider",
                "symbol",
                "date",
                "featureset",
                "hash",
            ]
        )
    )
    key = {"horizon<0": "label_horizon_sec", "horizon>day": "label_horizon_sec"}.get(choice, choice)
    if choice == "horizon<0":
        m[key] = -draw(st.integers(1, 10**6))
    elif choice == "horizon>day":
        m[key] = draw(st.integers(86_401, 10**12))
    elif choice == "rows":
        m[key] = m["rows"] + draw(st.sampled_from([-1, 1, 10**9, -(10**9)]))
    elif choice == "ts_min":
        m[key] = m["ts_min"] + draw(st.sampled_from([1, -86_400_000 * 3, -(10**15)]))
    elif choice == "ts_max":
        m[key] = m["ts_max"] + draw(st.sampled_from([-1, 86_400_000 * 3, 10**15]))
    elif choice == "ts_wider":  # inside the day, but not what the rows span
        key = "ts_min"
        m[key] = day_ms(part.date)[0]
        if m[key] == part.table().column("ts").to_numpy().min():
            return Damage("meta: none", "accept", (), frozenset())  # the data's own first ms
    elif choice == "symbol":
        m[key] = "xrpusdt"
    elif choice == "date":
        m[key] = "20200101"
    elif choice == "featureset":
        key = "featureset_version"
        m[key] = "v2"
    else:
        key = "config_hash"
        m[key] = "other"
        if len(ds.parts) < 3:  # with two partitions either one is the odd one out
            return Damage(
                "meta: config hash differs",
                "refuse",
                tuple(t for p in ds.parts.values() for t in _named(p)),
                frozenset({EXIT_DATA}),
            )
    return Damage(f"meta: {choice}", "refuse", (*_named(part), key), frozenset({EXIT_DATA}))


def meta_missing_key(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    assert isinstance(part.meta, dict)
    key = draw(st.sampled_from(sorted(part.meta)))
    del part.meta[key]
    return Damage("meta: missing key", "refuse", (*_named(part), key), frozenset({EXIT_DATA}))


def meta_not_json(ds: Dataset, part: Part, draw: st.DrawFn) -> Damage:
    part.meta = draw(st.sampled_from([b"", b"{", b"[1, 2]", b"null", b'"text"', b"\xff\xfe"]))
    return Damage("meta: not a JSON object", "refuse", _named(part), frozenset({EXIT_DATA}))


DATA_DAMAGES: tuple[DataDamage, ...] = (
    nan_row_group,
    scattered_non_finite,
    empty_row_group,
    duplicated_rows,
    shuffled_rows,
    shifted_timestamps,
    null_timestamps,
    retyped_column,
    missing_column,
    extra_column,
    missing_files,
    garbage_parquet,
    empty_partition,
    meta_type,
    meta_range,
    meta_missing_key,
    meta_not_json,
)


@st.composite
def damaged_data(draw: st.DrawFn, ds: Dataset) -> list[Damage]:
    """One or two damages, each to one partition (never the same one twice)."""
    out = []
    keys = draw(st.lists(st.sampled_from(sorted(ds.parts)), min_size=1, max_size=2, unique=True))
    for key in keys:
        damage = draw(st.sampled_from(DATA_DAMAGES))
        out.append(damage(ds, ds.parts[key], draw))
    return out


def all_label_nan(ds: Dataset) -> Damage:
    """Every label of every partition NaN: nothing to train on, which the pre-flight sees."""
    for part in ds.parts.values():
        _column(part, "label", lambda v: np.full_like(v, np.nan))
    return Damage("data: all-NaN label", "refuse", ("label",), frozenset({EXIT_DATA}))
