"""The storage layout v1, checked against the spec's own examples character for character."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.errors import StorageError
from trainer.spec.sections import StorageSpec
from trainer.store import ObjectStore, open_store
from trainer.store.base import Loc
from trainer.store.layout import RAW_BUCKET, Layout, Partition

PART = Partition("binance", "bbo", "btcusdt", "20251229")


def test_curated_example() -> None:
    assert str(Layout().curated_dir(PART)) == (
        "s3://quantlab-compact/curated/exchange=binance/stream=bbo/symbol=btcusdt/date=20251229/"
    )


def test_feature_example() -> None:
    assert str(Layout().feature_data(PART)) == (
        "s3://quantlab-compact/features/featureset=v1/exchange=binance/stream=bbo/"
        "symbol=btcusdt/date=20251229/data.parquet"
    )
    assert str(Layout().feature_meta(PART)).endswith("date=20251229/meta.json")


def test_artifact_and_production_examples() -> None:
    layout = Layout()
    assert str(layout.job("job-8271").model) == (
        "s3://quantlab-artifacts/ml-artifacts/job-8271/model.bin"
    )
    assert str(layout.production("btcusdt").model) == (
        "s3://quantlab-artifacts/models/production/btcusdt/model.bin"
    )


def test_buckets_are_overridable_for_staging() -> None:
    layout = Layout(artifacts_bucket="quantlab-artifacts-staging")
    assert str(layout.job("j1").dir) == "s3://quantlab-artifacts-staging/ml-artifacts/j1/"


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Partition("binance", "bbo", "BTCUSDT", "20251229"),
        lambda: Partition("binance", "bbo", "btcusdt", "20251332"),
        lambda: Partition("bin/ance", "bbo", "btcusdt", "20251229"),
        lambda: Layout().job("../escape"),
        lambda: Layout().production("BTC"),
    ],
)
def test_invalid_partition_values_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]


def test_nothing_writes_to_the_raw_bucket(local_store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="read-only"):
        local_store.put(Loc("quantlab-raw", "x"), b"")
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StorageError, match="read-only"):
        local_store.upload(Loc("quantlab-raw", "x"), tmp_path / "f")
    with pytest.raises(StorageError, match="read-only"):
        local_store.delete(Loc("quantlab-raw", "x"))


def test_the_layouts_raw_bucket_is_read_only_whatever_the_caller_names(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}", read_only_buckets=["another-raw"])
    for bucket in ("quantlab-raw", "another-raw"):
        with pytest.raises(StorageError, match="read-only"):
            store.put(Loc(bucket, "x"), b"")
    assert StorageSpec().raw_bucket == RAW_BUCKET
