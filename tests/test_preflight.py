"""Dataset pre-flight: footers and meta.json only, every problem in one run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import make_dataset, make_spec, spec_dict, write_spec
from trainer.data.passes import compute_feature_stats
from trainer.data.plan import preflight, summary
from trainer.data.synth import SynthConfig, make_day, meta_for, write_partition
from trainer.errors import EXIT_DATA, DataError
from trainer.store import ObjectStore
from trainer.store.layout import Layout, Partition


def test_clean_dataset_passes_with_a_summary(store: ObjectStore, layout: Layout) -> None:
    spec = make_spec(dates=("20251201", "20251204"), symbols=("btcusdt", "ethusdt"))
    cfg = make_dataset(store, spec)
    plan = preflight(spec.data, store, layout)
    s = summary(plan)
    assert s["partitions"] == 8 and s["rows"] == 8 * cfg.rows_per_day
    assert s["date_span"] == "20251201..20251204"
    assert plan.features == cfg.feature_names
    assert plan.label_horizon_sec == cfg.label_horizon_sec
    # validation_days=1: a quarter of the rows, less the purge window before it
    assert s["val_rows_expected"] == pytest.approx(2 * cfg.rows_per_day, rel=0.01)
    assert s["train_rows_expected"] == pytest.approx(6 * cfg.rows_per_day, rel=0.01)
    assert all(len(p.row_groups) == 4 for p in plan.partitions)


def test_four_problems_in_one_run(store: ObjectStore, layout: Layout) -> None:
    spec = make_spec(dates=("20251201", "20251205"))
    cfg = SynthConfig(rows_per_day=2_000, row_group_size=1_000)
    parts = {d: Partition("binance", "bbo", "btcusdt", d) for d in spec.data.dates.resolve()}
    for date, part in parts.items():
        if date == "20251202":
            continue  # 1. a missing date
        table, meta = make_day("btcusdt", date, cfg), None
        meta = meta_for(table, "btcusdt", date, cfg)
        if date == "20251203":
            meta["rows"] = 1_999  # 2. meta.json disagrees with its file
        if date == "20251204":
            meta["config_hash"] = "deadbeefdeadbeef"  # 3. another config hash
        if date == "20251205":
            table = table.drop_columns(["label"])  # 4. no label column
        write_partition(store, layout, part, table, meta, cfg)

    with pytest.raises(DataError) as info:
        preflight(spec.data, store, layout)
    problems = info.value.problems
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert "date 20251202, symbol btcusdt: partition missing" in text
    assert "date=20251203/: meta.json rows=1999 but data.parquet holds 2000 rows" in text
    assert "date=20251204/: config_hash=deadbeefdeadbeef, the other partitions have" in text
    assert "date=20251205/: no label column 'label'" in text


def test_meta_that_contradicts_its_path(local_store: ObjectStore, layout: Layout) -> None:
    spec = make_spec(dates=("20251201", "20251202"))
    cfg = SynthConfig(rows_per_day=1_000)
    for date in spec.data.dates.resolve():
        table = make_day("btcusdt", date, cfg)
        meta = meta_for(table, "btcusdt", date, cfg)
        if date == "20251202":
            meta.update(symbol="ethusdt", ts_max=int(meta["ts_max"]) + 86_400_000)  # type: ignore[call-overload]
        write_partition(
            local_store, layout, Partition("binance", "bbo", "btcusdt", date), table, meta, cfg
        )
    with pytest.raises(DataError) as info:
        preflight(spec.data, local_store, layout)
    text = "\n".join(info.value.problems)
    assert "meta.json symbol='ethusdt', the path says 'btcusdt'" in text
    assert "is not inside date 20251202" in text


def test_non_numeric_feature_and_corrupt_footer(local_store: ObjectStore, layout: Layout) -> None:
    spec = make_spec(dates=("20251201", "20251202"), data={"features": ["imbalance_l1"]})
    cfg = SynthConfig(rows_per_day=1_000)
    make_dataset(local_store, spec, cfg)
    part1 = Partition("binance", "bbo", "btcusdt", "20251201")
    table = make_day("btcusdt", "20251201", cfg)
    table = table.set_column(
        table.schema.get_field_index("imbalance_l1"),
        "imbalance_l1",
        pa.array(np.array(["x"] * table.num_rows)),
    )
    write_partition(
        local_store, layout, part1, table, meta_for(table, "btcusdt", "20251201", cfg), cfg
    )
    bad = layout.feature_data(Partition("binance", "bbo", "btcusdt", "20251202"))
    local_store.put(bad, b"PAR1 this is not parquet")
    with pytest.raises(DataError) as info:
        preflight(spec.data, local_store, layout)
    text = "\n".join(info.value.problems)
    assert "column 'imbalance_l1' is string, not numeric" in text
    assert "date=20251202/data.parquet: unreadable Parquet footer" in text


def test_preflight_reads_footers_not_data(local_store: ObjectStore, layout: Layout) -> None:
    spec = make_spec(dates=("20251201", "20251201"), data={"split": {"validation_fraction": 0.2}})
    make_dataset(local_store, spec, SynthConfig(rows_per_day=50_000, row_group_size=10_000))
    path = local_store.path(
        layout.feature_data(
            Partition(
                "binance",
                "bbo",
                "btcusdt",  # type: ignore[attr-defined]
                "20251201",
            )
        )
    )
    size = Path(path).stat().st_size
    # Truncating the data pages but keeping the footer must not matter to pre-flight.
    raw = Path(path).read_bytes()
    footer_len = int.from_bytes(raw[-8:-4], "little")
    assert footer_len < size / 10
    plan = preflight(spec.data, local_store, layout)
    assert plan.rows == 50_000


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    spec_path = write_spec(tmp_path / "spec.yaml", spec_dict())
    run = [sys.executable, "-m", "trainer"]
    gen = subprocess.run(
        [*run, "generate", str(spec_path), "--store", f"file://{root}", "--rows-per-day", "2000"],
        capture_output=True,
        text=True,
    )
    assert gen.returncode == 0, gen.stderr
    ok = subprocess.run(
        [*run, "validate", str(spec_path), "--check-data", "--store", f"file://{root}", "--json"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["data"]["partitions"] == 3 and result["data"]["rows"] == 6000

    wider = write_spec(tmp_path / "wider.yaml", spec_dict(dates=("20251201", "20251204")))
    bad = subprocess.run(
        [*run, "validate", str(wider), "--check-data", "--store", f"file://{root}"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == EXIT_DATA
    assert "date 20251204, symbol btcusdt: partition missing" in bad.stderr


def test_synthetic_label_carries_the_promised_signal() -> None:
    cfg = SynthConfig(rows_per_day=200_000)
    table = make_day("btcusdt", "20251201", cfg)
    y = table.column("label").to_numpy(zero_copy_only=False)
    x = table.column("imbalance_l1").to_numpy(zero_copy_only=False)
    ts = table.column("ts").to_numpy()
    ok = np.isfinite(y) & np.isfinite(x)
    assert np.corrcoef(x[ok], y[ok])[0, 1] == pytest.approx(cfg.signal_ic, abs=0.01)
    noise = table.column("ret_1s").to_numpy(zero_copy_only=False)
    ok2 = ok & np.isfinite(noise)
    assert abs(np.corrcoef(noise[ok2], y[ok2])[0, 1]) < 0.01
    # the last label_horizon_sec of the day have no forward window: NaN labels
    last = ts.max()
    assert np.isnan(y[ts > 1764633600000 - cfg.label_horizon_sec * 1000]).all()
    assert ts.min() >= 1764547200000 and last <= 1764633599999
    meta = meta_for(table, "btcusdt", "20251201", cfg)
    assert set(meta) == {
        "featureset_version",
        "symbol",
        "date",
        "rows",
        "ts_min",
        "ts_max",
        "label_horizon_sec",
        "config_hash",
    }
    assert pq.read_metadata is not None


def test_generator_writes_floats_split_and_never_a_dictionary(
    local_store: ObjectStore, layout: Layout
) -> None:
    spec = make_spec(dates=("20251201", "20251201"), data={"split": {"validation_fraction": 0.2}})
    make_dataset(local_store, spec, SynthConfig(rows_per_day=3_000, row_group_size=1_000))
    part = Partition("binance", "bbo", "btcusdt", "20251201")
    md = pq.read_metadata(local_store.path(layout.feature_data(part)))  # type: ignore[attr-defined]
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            col = md.row_group(g).column(c)
            want = "DELTA_BINARY_PACKED" if col.path_in_schema == "ts" else "BYTE_STREAM_SPLIT"
            assert want in col.encodings, (col.path_in_schema, col.encodings)
            assert col.dictionary_page_offset is None and "RLE_DICTIONARY" not in col.encodings


def _days_damaging_the_middle(
    store: ObjectStore,
    layout: Layout,
    dates: tuple[str, ...],
    damage: Callable[[pa.Table, dict[str, object]], pa.Table],
) -> None:
    """One generated partition a day; the middle day's table and meta.json go through
    `damage` (which may change the meta in place) before they are written."""
    cfg = SynthConfig(rows_per_day=1_000)
    for date in dates:
        table = make_day("btcusdt", date, cfg)
        meta = meta_for(table, "btcusdt", date, cfg)
        if date == dates[len(dates) // 2]:
            table = damage(table, meta)
        part = Partition("binance", "bbo", "btcusdt", date)
        write_partition(store, layout, part, table, meta, cfg)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "label_horizon_sec",
            -600,
            "label_horizon_sec: Input should be greater than or equal to 0",
        ),
        (
            "label_horizon_sec",
            10**9,
            "label_horizon_sec: Input should be less than or equal to 86400",
        ),
        ("label_horizon_sec", "10", "label_horizon_sec: Input should be a valid integer"),
        ("label_horizon_sec", 10.5, "label_horizon_sec: Input should be a valid integer"),
        ("rows", True, "rows: Input should be a valid integer"),
        ("rows", -1, "rows: Input should be greater than or equal to 0"),
        ("ts_min", None, "ts_min: Input should be a valid integer"),
        ("ts_max", [1], "ts_max: Input should be a valid integer"),
        ("config_hash", 7, "config_hash: Input should be a valid string"),
        ("config_hash", "", "config_hash: String should have at least 1 character"),
    ],
)
def test_every_meta_field_is_checked_for_type_and_range_naming_the_partition(
    local_store: ObjectStore, layout: Layout, field: str, value: object, expected: str
) -> None:
    spec = make_spec(dates=("20251201", "20251203"))

    def damage(table: pa.Table, meta: dict[str, object]) -> pa.Table:
        meta[field] = value
        return table

    _days_damaging_the_middle(local_store, layout, spec.data.dates.resolve(), damage)
    with pytest.raises(DataError) as info:
        preflight(spec.data, local_store, layout)
    (problem,) = info.value.problems
    assert "symbol=btcusdt/date=20251202/: meta.json" in problem and expected in problem


def _shifted_day(
    store: ObjectStore,
    layout: Layout,
    spec_dates: tuple[str, ...],
    cfg: SynthConfig,
    **write: object,
) -> None:
    """Every day written, the middle one's rows moved a day on while its meta.json still
    describes its own day."""
    for date in spec_dates:
        table = make_day("btcusdt", date, cfg)
        meta = meta_for(table, "btcusdt", date, cfg)
        part = Partition("binance", "bbo", "btcusdt", date)
        if date != spec_dates[1]:
            write_partition(store, layout, part, table, meta, cfg)
            continue
        ts = table.column("ts").to_numpy() + 86_400_000
        table = table.set_column(0, "ts", pa.array(ts))
        path = Path(str(store.root).removeprefix("file://")) / "upload.parquet"
        pq.write_table(table, path, row_group_size=cfg.row_group_size, **write)  # type: ignore[arg-type]
        store.upload(layout.feature_data(part), path)
        store.put(layout.feature_meta(part), json.dumps(meta).encode())


def test_rows_of_another_day_are_refused_by_the_preflight_from_the_statistics(
    local_store: ObjectStore, layout: Layout
) -> None:
    spec = make_spec(dates=("20251201", "20251203"))
    _shifted_day(local_store, layout, spec.data.dates.resolve(), SynthConfig(rows_per_day=2_000))
    with pytest.raises(DataError) as info:
        preflight(spec.data, local_store, layout)
    (problem,) = info.value.problems
    assert "date=20251202/: row group 0 holds timestamps" in problem
    assert "outside meta.json's ts_min..ts_max" in problem and "for date 20251202" in problem


def test_rows_of_another_day_without_statistics_fail_the_loader_naming_the_partition(
    local_store: ObjectStore, layout: Layout
) -> None:
    spec = make_spec(dates=("20251201", "20251203"))
    cfg = SynthConfig(rows_per_day=2_000, row_group_size=1_000)
    _shifted_day(local_store, layout, spec.data.dates.resolve(), cfg, write_statistics=False)
    plan = preflight(spec.data, local_store, layout)
    with pytest.raises(DataError) as info:
        compute_feature_stats(plan, local_store)
    (problem,) = info.value.problems
    assert "date=20251202/data.parquet: row group 0:" in problem
    assert "timestamp(s) outside meta.json's ts_min..ts_max" in problem


def test_a_null_timestamp_is_refused_naming_the_partition(
    local_store: ObjectStore, layout: Layout
) -> None:
    spec = make_spec(dates=("20251201", "20251203"))

    def damage(table: pa.Table, meta: dict[str, object]) -> pa.Table:
        ts = table.column("ts").to_pylist()
        ts[10] = None
        return table.set_column(0, "ts", pa.array(ts, pa.int64()))

    _days_damaging_the_middle(local_store, layout, spec.data.dates.resolve(), damage)
    with pytest.raises(DataError) as info:
        preflight(spec.data, local_store, layout)
    assert any(
        "date=20251202/: 1 null timestamp(s) in column 'ts'" in p for p in info.value.problems
    ), info.value.problems
