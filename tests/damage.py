"""Damaged datasets and specs for the property suite, and the recount a committed job is held
to. Everything here is written with plain pyarrow, numpy and json: the files the trainer reads
and the numbers it is checked against never go through the trainer's own code.

A case is a clean dataset (a few symbols and days, small row groups) plus a few damages. Each
damage says what the runner must do with it (`refuse`, `accept`, or `either` where both are
right) and what a refusal must name: the spec field, or the partition."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
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


# -- spec damages --------------------------------------------------------------------------
NOT_YAML = (
    "[1",
    "*a",
    "\t",
    "!!python/object/apply:os.system ['true']",
    "{a: 1",
    "'open",
    "a: b: c",
    "!!binary zz",
)
NOT_A_NUMBER = ("abc", "[1]", "{a: 1}", "''")
NON_FINITE = (".nan", ".inf", "-.inf", ".NaN")
BAD_FRACTIONS = ("0", "1", "-0.5", ".nan", "2")
CENTURIES_AGO = ("10000101", "19000101", "16000229")


@dataclass(frozen=True)
class Field:
    path: str
    valid: st.SearchStrategy[str]
    """YAML text of values that must be accepted (and then train)."""
    invalid: tuple[str, ...]
    """YAML text of values that must be refused by name."""
    codes: frozenset[int] = frozenset({EXIT_SPEC})


def _floats(lo: float, hi: float) -> st.SearchStrategy[str]:
    return st.floats(lo, hi, allow_nan=False).map(repr)


def _ints(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(str)


FIELDS = (
    Field("train.lr", _floats(1e-4, 0.05), ("0", "-1", "11", "1e400", *NON_FINITE, *NOT_A_NUMBER)),
    Field("train.batch_size", _ints(64, 256), ("0", "-5", "2097152", "1.5", *NOT_A_NUMBER)),
    Field("train.epochs", _ints(1, 2), ("0", "-1", "2.5", *NOT_A_NUMBER)),
    Field("train.weight_decay", _floats(0, 1), ("-0.1", "1.5", *NON_FINITE, *NOT_A_NUMBER)),
    Field("train.seed", _ints(0, 2**63 - 1), ("-1", str(2**63), str(2**64), str(10**30))),
    Field("train.grad_clip", _floats(0.1, 10) | st.just("null"), ("0", "-1", *NON_FINITE)),
    Field("train.warmup_steps", _ints(0, 20), ("-1", ".inf", *NOT_A_NUMBER)),
    Field("train.early_stopping.min_delta", _floats(0, 1), ("-1", *NON_FINITE, "1e7")),
    Field("model.dropout", _floats(0, 0.5), ("1", "-0.1", *NON_FINITE)),
    Field("promotion.min_ic", _floats(-1, 1) | st.just("null"), ("1.5", "-2", *NON_FINITE)),
    Field("promotion.max_ic_drop", _floats(0, 2), ("-1", "3", *NON_FINITE)),
    Field("limits.max_cost_usd", _floats(1, 1000), ("0", "-1", "1e9", *NON_FINITE)),
    Field("limits.max_runtime_minutes", _floats(1, 1000), ("0", "1e9", *NON_FINITE)),
    Field("data.split.purge_sec", _ints(0, 3600), ("-1", "2.5", *NOT_A_NUMBER)),
    Field("data.cache_gb", _floats(0, 1) | st.just("null"), ("-1", *NON_FINITE)),
    Field("job.name", st.sampled_from(["a", "'x y'"]), ("[1]", "{a: 1}")),
    Field(
        "job.id",
        st.sampled_from(["job-a", "b.c_d"]),
        ("../x", "x/y", "UPPER", "''", "'.hidden'", "'a b'", "'x' ", "[1]"),
    ),
)


@st.composite
def spec_damages(draw: st.DrawFn, ds: Dataset) -> Damage:
    """One spec field set to a value in range, out of range, of the wrong type, not finite,
    or not YAML at all; or a damage that needs the data to be seen (a purge longer than the
    span, a split with no training day, a column or symbol the data lacks, dates outside it)."""
    kind = draw(st.sampled_from(["field", "data-bound"]))
    if kind == "field":
        f = draw(st.sampled_from(FIELDS))
        choice = draw(st.sampled_from(["valid", "invalid", "invalid", "not yaml"]))
        if choice == "valid":
            return Damage(
                "spec: value in range",
                "accept",
                (),
                frozenset(),
                overrides=(f"{f.path}={draw(f.valid)}",),
            )
        text = draw(st.sampled_from(f.invalid if choice == "invalid" else NOT_YAML))
        via_file = choice == "invalid" and draw(st.booleans())
        what = "spec: not YAML" if choice == "not yaml" else "spec: out of range or wrong type"
        if via_file:
            value = yaml.safe_load(text)
            return Damage(
                what, "refuse", (f.path,), f.codes, spec_change=lambda raw: _set(raw, f.path, value)
            )
        return Damage(what, "refuse", (f.path,), f.codes, overrides=(f"{f.path}={text}",))
    n = len(ds.dates)
    last = dt.datetime.strptime(ds.dates[-1], "%Y%m%d")
    later = (last + dt.timedelta(days=draw(st.integers(1, 20)))).strftime("%Y%m%d")
    options: list[Damage] = [
        Damage(
            "spec: purge longer than the training span",
            "refuse",
            ("data.split.purge_sec",),
            frozenset({EXIT_SPEC, EXIT_DATA}),
            overrides=(f"data.split.purge_sec={draw(st.integers(n * 86_400, 10**9))}",),
        ),
        Damage(
            "spec: validation_days leaves no training day",
            "refuse",
            ("data.split.validation_days",),
            frozenset({EXIT_SPEC, EXIT_DATA}),
            overrides=(f"data.split.validation_days={draw(st.integers(n, 10**6))}",),
        ),
        Damage(
            "spec: validation days in range",
            "accept",
            (),
            frozenset(),
            overrides=(f"data.split.validation_days={draw(st.integers(1, n - 1))}",),
        ),
        Damage(
            "spec: validation fraction in range",
            "accept",
            (),
            frozenset(),
            overrides=(
                "data.split.validation_days=null",
                f"data.split.validation_fraction={draw(st.floats(0.15, 0.6)):.3f}",
            ),
        ),
        Damage(
            "spec: validation fraction out of range",
            "refuse",
            ("data.split.validation_fraction",),
            frozenset({EXIT_SPEC}),
            overrides=(
                "data.split.validation_days=null",
                f"data.split.validation_fraction={draw(st.sampled_from(BAD_FRACTIONS))}",
            ),
        ),
        Damage(
            "spec: a feature subset",
            "accept",
            (),
            frozenset(),
            overrides=(f"data.features=[{', '.join(FEATURES[: draw(st.integers(1, 3))])}]",),
        ),
        Damage(
            "spec: no feature",
            "refuse",
            ("data.features",),
            frozenset({EXIT_SPEC}),
            overrides=("data.features=[]",),
        ),
        Damage(
            "spec: a feature twice",
            "refuse",
            ("data.features",),
            frozenset({EXIT_SPEC}),
            overrides=("data.features=[f0, f1, f0]",),
        ),
        Damage(
            "spec: a column the data lacks",
            "refuse",
            ("nope",),
            frozenset({EXIT_DATA}),
            overrides=("data.features=[f0, nope]",),
        ),
        Damage(
            "spec: a symbol twice",
            "refuse",
            ("data.symbols", "btcusdt"),
            frozenset({EXIT_SPEC}),
            overrides=("data.symbols=[btcusdt, btcusdt]",),
        ),
        Damage(
            "spec: a symbol with no data",
            "refuse",
            ("xrpusdt",),
            frozenset({EXIT_DATA}),
            overrides=("data.symbols=[btcusdt, xrpusdt]",),
        ),
        Damage(
            "spec: a path-like symbol",
            "refuse",
            ("data.symbols",),
            frozenset({EXIT_SPEC}),
            overrides=(f"data.symbols=[{draw(st.sampled_from(['../x', 'a/b', 'BTC', '.']))}]",),
        ),
        Damage(
            "spec: dates past the data",
            "refuse",
            ("date=2025", "date 2025", "2025"),
            frozenset({EXIT_DATA}),
            overrides=(f"data.dates.end={later}",),
        ),
        Damage(
            "spec: a span of centuries",
            "refuse",
            ("data.dates",),
            frozenset({EXIT_SPEC}),
            overrides=(f"data.dates.start={draw(st.sampled_from(CENTURIES_AGO))}",),
        ),
        Damage(
            "spec: end before start",
            "refuse",
            ("data.dates",),
            frozenset({EXIT_SPEC}),
            overrides=("data.dates.end=20251101",),
        ),
    ]
    return draw(st.sampled_from(options))


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    node = raw
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def base_spec(ds: Dataset) -> dict[str, Any]:
    return {
        "data": {
            "exchange": "binance",
            "stream": "bbo",
            "symbols": list(ds.symbols),
            "dates": {"start": ds.dates[0], "end": ds.dates[-1]},
            "split": {"validation_days": 1},
            "cache_gb": 0.05,
        },
        "model": {"hidden": [4]},
        "train": {
            "epochs": 1,
            "batch_size": 128,
            "lr": 0.003,
            "warmup_steps": 0,
            "precision": "fp32",
            "eval_every_steps": 1000,
            "log_every_steps": 1000,
            "checkpoint": {"every_minutes": None},
        },
    }


# -- the recount ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Recount:
    val_start_ms: int
    train_end_ms: int
    train_used: int
    train_dropped: int
    train_planned: int
    val_used: int
    val_dropped: int
    val_planned: int
    val_labels: np.ndarray


def recount(ds: Dataset, spec: dict[str, Any]) -> Recount:
    """The split bounds and the rows of each split, from the rows as written: the bounds from
    the spec's rule and the rows' own time span, the purge from the spec or meta.json."""
    d = spec["data"]
    features = d.get("features") or list(FEATURES)
    split = d.get("split", {})
    tables = [(p, p.table()) for p in ds.parts.values()]
    all_ts = np.concatenate([t.column("ts").to_numpy() for _, t in tables if t.num_rows])
    ts_min, ts_max = int(all_ts.min()), int(all_ts.max())
    if split.get("validation_days"):
        val_start = day_ms(sorted(ds.dates)[-split["validation_days"]])[0]
    else:
        fraction = split.get("validation_fraction") or 0.2
        val_start = ts_min + int((1.0 - fraction) * (ts_max - ts_min + 1))
    purge = split.get("purge_sec")
    purge = ds.horizon if purge is None else purge
    train_end = val_start - purge * 1000
    n = dict.fromkeys(("tu", "td", "tp", "vu", "vd", "vp"), 0)
    labels = []
    for part, _ in tables:
        for g in part.groups:
            if not g.num_rows:
                continue
            ts = g.column("ts").to_numpy()
            values = np.column_stack(
                [
                    g.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                    for c in (*features, "label")
                ]
            )
            finite = np.isfinite(values).all(axis=1)
            train, val = ts < train_end, ts >= val_start
            n["tu"] += int((train & finite).sum())
            n["td"] += int((train & ~finite).sum())
            n["tp"] += g.num_rows if train.any() else 0
            n["vu"] += int((val & finite).sum())
            n["vd"] += int((val & ~finite).sum())
            n["vp"] += g.num_rows if val.any() else 0
            labels.append(values[val & finite, -1])
    return Recount(
        val_start,
        train_end,
        n["tu"],
        n["td"],
        n["tp"],
        n["vu"],
        n["vd"],
        n["vp"],
        np.sort(np.concatenate(labels)),
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
