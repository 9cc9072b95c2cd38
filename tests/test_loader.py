"""The streaming loader on generated partitions: every row once, deterministic shuffles,
the purged split, non-finite rows, exact resume, read failures, the cache, ranks."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import wait

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers import nan_rows, recount, write_day
from trainer.data.blocks import BlockSpec, to_block
from trainer.data.cache import cache_budget, host_available_bytes
from trainer.data.loader import (
    BlockCache,
    StreamingLoader,
    compute_feature_stats,
    read_split_arrays,
)
from trainer.data.order import batch_segments, sample_units, split_units
from trainer.data.passes import _moments, split_spec, stats_units
from trainer.data.plan import DatasetPlan, preflight
from trainer.data.prefetch import READ_THREADS, PartitionFiles, usable_cores
from trainer.data.synth import SynthConfig, generate
from trainer.data.tally import Tally
from trainer.errors import DataError
from trainer.spec.sections import DataSpec
from trainer.store import ObjectStore
from trainer.store.layout import Layout, Partition

SYMBOLS = ("btcusdt", "ethusdt")
DATES = ("20250101", "20250102", "20250103")
CFG = SynthConfig(rows_per_day=3000, n_features=5, row_group_size=500, feature_nan_rate=0.003)
BATCH = 256


def _spec() -> DataSpec:
    return DataSpec(
        exchange="binance",
        stream="bbo",
        symbols=SYMBOLS,
        dates={"start": DATES[0], "end": DATES[-1]},  # type: ignore[arg-type]
        # a half-hour purge, longer than the label horizon, so that the gap holds rows
        split={"validation_days": 1, "purge_sec": 1800},  # type: ignore[arg-type]
    )


def _dataset(store: ObjectStore, layout: Layout, cfg: SynthConfig = CFG) -> DatasetPlan:
    generate(store, layout, "binance", "bbo", SYMBOLS, DATES, cfg)
    return preflight(_spec(), store, layout)


@pytest.fixture
def plan(local_store: ObjectStore, layout: Layout) -> DatasetPlan:
    return _dataset(local_store, layout)


def _source(store: ObjectStore, plan: DatasetPlan) -> dict[str, np.ndarray]:
    """Every row of every partition, read with plain pyarrow: the ground truth."""
    fs = store.arrow_fs()
    tables = [pq.read_table(store.arrow_path(p.data), filesystem=fs) for p in plan.partitions]

    def col(name: str) -> np.ndarray:
        return np.concatenate([t.column(name).to_numpy() for t in tables])

    x = np.column_stack([col(f) for f in plan.features]).astype(np.float32)
    return {"ts": col("ts"), "x": x, "y": col(plan.label).astype(np.float32)}


def _expected(src: dict[str, np.ndarray], keep: np.ndarray) -> Counter[tuple[int, float]]:
    finite = np.isfinite(src["y"]) & np.isfinite(src["x"]).all(axis=1)
    sel = keep & finite
    return Counter(zip(src["ts"][sel].tolist(), src["y"][sel].tolist(), strict=True))


def _keys(batches: Iterable[tuple[torch.Tensor, ...]]) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    for _x, y, ts in batches:
        out += zip(ts.tolist(), y.tolist(), strict=True)
    return out


def _train(plan: DatasetPlan, store: ObjectStore, **kw: object) -> StreamingLoader:
    args: dict[str, object] = {"split": "train", "batch_size": BATCH, "with_ts": True}
    return StreamingLoader(plan, store, **{**args, **kw})  # type: ignore[arg-type]


def test_every_training_row_once_per_epoch_with_features_intact(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    src = _source(local_store, plan)
    loader = _train(plan, local_store)
    batches = list(loader.epoch_with_ts(0))
    assert Counter(_keys(batches)) == _expected(src, src["ts"] < plan.bounds.train_end_ms)
    assert all(len(b[1]) == BATCH for b in batches[:-1]) and 0 < len(batches[-1][1]) <= BATCH
    # each delivered row carries its own features, not another row's
    keys = zip(src["ts"].tolist(), src["y"].tolist(), strict=True)
    by_key = {key: i for i, key in enumerate(keys)}
    for x, y, ts in batches[:5]:
        rows = [by_key[(t, v)] for t, v in zip(ts.tolist(), y.tolist(), strict=True)]
        np.testing.assert_array_equal(x.numpy(), src["x"][rows])
    assert x.dtype == torch.float32 and x.is_contiguous() and y.shape == (len(rows),)
    stats = loader.stats
    assert stats.rows == sum(len(b[1]) for b in batches) and stats.batches == len(batches)
    assert stats.first_batch_s is not None and stats.bytes_read > 0
    # the validation day's row groups are left unread, by their timestamp statistics
    every = sum(len(p.row_groups) for p in plan.partitions)
    assert stats.row_groups_read == len(loader.units) == every * 2 // 3


def test_two_ranks_share_the_rows_exactly_once(plan: DatasetPlan, local_store: ObjectStore) -> None:
    src = _source(local_store, plan)
    ranks = [_train(plan, local_store, rank=r, world_size=2, seed=3) for r in (0, 1)]
    got = [Counter(_keys(loader.epoch_with_ts(1))) for loader in ranks]
    assert not set(got[0]) & set(got[1])
    assert got[0] + got[1] == _expected(src, src["ts"] < plan.bounds.train_end_ms)
    planned = ranks[0].shard_rows(1)
    assert [loader.stats.planned_rows for loader in ranks] == planned
    assert all(loader.stats.rows > 0 for loader in ranks)


def test_order_is_a_function_of_seed_and_epoch(plan: DatasetPlan, local_store: ObjectStore) -> None:
    def order(seed: int, epoch: int) -> list[tuple[int, float]]:
        return _keys(_train(plan, local_store, seed=seed).epoch_with_ts(epoch))

    first = order(7, 0)
    assert order(7, 0) == first
    assert order(8, 0) != first and Counter(order(8, 0)) == Counter(first)
    assert order(7, 1) != first
    # a batch mixes rows of several row groups (of any partition), not one run of a file
    src = _source(local_store, plan)
    keys = zip(src["ts"].tolist(), src["y"].tolist(), strict=True)
    source_row = {key: i for i, key in enumerate(keys)}
    rows = [source_row[key] for key in first[:BATCH]]
    assert len({r // CFG.row_group_size for r in rows}) >= 3
    assert max(rows) - min(rows) > 2 * BATCH


def test_reading_threads_follow_the_store_and_the_cores(
    plan: DatasetPlan, local_store: ObjectStore, s3_store: ObjectStore
) -> None:
    # local reads decode: no more threads than the cores this process may use
    cores = len(os.sched_getaffinity(0))
    assert usable_cores() == cores
    assert _train(plan, local_store).files_in_flight == min(READ_THREADS, cores)
    # remote reads wait on the network: as many in flight whatever the machine
    remote = StreamingLoader(plan, s3_store, split="train", batch_size=BATCH)
    assert remote.files_in_flight == READ_THREADS
    assert _train(plan, local_store, files_in_flight=5).files_in_flight == 5


def test_validation_starts_after_every_training_label_window(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    src = _source(local_store, plan)
    train_ts = [t for t, _ in _keys(_train(plan, local_store).epoch_with_ts(0))]
    val = StreamingLoader(plan, local_store, split="val", batch_size=BATCH)
    val_ts = [t for t, _ in _keys(val.epoch_with_ts(0))]
    assert max(train_ts) + plan.label_horizon_sec * 1000 < min(val_ts)
    assert val.stats.row_groups_read < sum(len(p.row_groups) for p in plan.partitions)
    x, y, ts = read_split_arrays(plan, local_store, "val")
    assert np.all(np.diff(ts) >= 0) and len(y) == len(val_ts) == x.shape[0]
    expected = _expected(src, src["ts"] >= plan.bounds.val_start_ms)
    assert Counter(zip(ts.tolist(), y.tolist(), strict=True)) == expected
    # the validation stream itself follows time order, row group by row group
    first = next(iter(val.epoch_with_ts(0)))[2]
    assert np.all(np.diff(first.numpy()) >= 0)


def test_purge_and_non_finite_rows_are_counted_never_fed(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    src = _source(local_store, plan)
    loader = _train(plan, local_store)
    batches = list(loader.epoch_with_ts(0))
    assert all(torch.isfinite(x).all() and torch.isfinite(y).all() for x, y, _ in batches)
    in_train = src["ts"] < plan.bounds.train_end_ms
    bad = ~(np.isfinite(src["y"]) & np.isfinite(src["x"]).all(axis=1))
    assert loader.stats.dropped_non_finite == int((bad & in_train).sum()) > 0
    b = plan.bounds
    gap = (src["ts"] >= b.train_end_ms) & (src["ts"] < b.val_start_ms)
    assert loader.stats.purged == int(gap.sum()) > 0


def test_infinite_values_drop_or_fail_naming_the_partition(
    local_store: ObjectStore, layout: Layout
) -> None:
    _dataset(local_store, layout)
    name = CFG.feature_names[2]

    def infinite(table: pa.Table) -> dict[str, np.ndarray]:
        values = table.column(name).to_numpy().copy()
        values[[10, 20]] = [np.inf, -np.inf]
        return {name: values}

    write_day(local_store, layout, Partition("binance", "bbo", SYMBOLS[0], DATES[0]), CFG, infinite)
    plan = preflight(_spec(), local_store, layout)
    src = _source(local_store, plan)
    in_train = src["ts"] < plan.bounds.train_end_ms
    bad = ~(np.isfinite(src["y"]) & np.isfinite(src["x"]).all(axis=1))
    loader = StreamingLoader(plan, local_store, split="train", batch_size=BATCH)
    rows = sum(len(y) for _, y in loader.epoch(0))
    assert loader.stats.dropped_non_finite == int((bad & in_train).sum())
    assert rows == int((~bad & in_train).sum())
    strict = StreamingLoader(plan, local_store, split="train", batch_size=BATCH, non_finite="fail")
    with pytest.raises(DataError, match="non-finite") as err:
        list(strict.epoch(0))
    assert any(local_store.uri(p.data) in str(err.value) for p in plan.partitions)


@pytest.mark.parametrize(
    "chunk",
    [
        pa.array(np.arange(10, dtype=np.float32)),
        pa.array(np.arange(10, dtype=np.float32)).slice(3, 5),  # an offset into its buffer
        pa.array(np.linspace(-1, 1, 7)),  # float64
        pa.array(np.arange(1_700_000_000_000, 1_700_000_000_009, dtype=np.int64)).slice(2),
        pa.array([1.5, None, 2.5], pa.float32()),  # a null becomes NaN
        pa.array([1, None, 3], pa.int64()),
        pa.array([0.25, 0.5, 0.25]).dictionary_encode(),
        pa.array([1.0, 2.0, 3.0], pa.float32()).slice(1).filter(pa.array([True, True])),
    ],
    ids=["f32", "f32-offset", "f64", "i64-offset", "f32-null", "i64-null", "dict", "filtered"],
)
def test_a_chunk_viewed_on_its_buffer_holds_what_to_numpy_gives(chunk: pa.Array) -> None:
    from trainer.data.blocks import chunk_values, fill_column

    want = np.asarray(chunk.to_numpy(zero_copy_only=False))
    got = chunk_values(chunk)
    assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)
    out = np.full(2 * len(chunk) + 1, -1.0, np.float32)  # two chunks, one after the other
    fill_column(out, pa.chunked_array([chunk, chunk]))
    expected = np.concatenate([want, want, [-1.0]]).astype(np.float32)
    assert np.array_equal(out, expected, equal_nan=True)


def test_row_with_huge_finite_values_is_kept() -> None:
    spec = BlockSpec(("a", "b"), "label", "ts", None, None, (0, 0))
    stage = np.array([[3e38, 1.0, np.nan], [3e38, 2.0, 1.0], [1.0, np.inf, 0.0]], np.float32)
    block = to_block(stage, None, spec, cut=False)
    assert block.rows == 1 and block.dropped == 2
    np.testing.assert_array_equal(block.x.numpy(), np.array([[3e38, 3e38]], np.float32))
    assert block.y.tolist() == [1.0]


@pytest.mark.parametrize(
    ("stop", "window"), [(1, 1), (5, 1), (11, 1), (12, 1), (23, 1), (1, 32), (7, 32), (16, 32)]
)
def test_resume_continues_with_exactly_the_same_batches(
    plan: DatasetPlan, local_store: ObjectStore, stop: int, window: int
) -> None:
    kw = {"seed": 5, "shuffle_buffer_row_groups": 3, "window": window}
    full = list(_train(plan, local_store, **kw).epoch_with_ts(2))
    first = _train(plan, local_store, **kw)
    it = first.epoch_with_ts(2)
    for _ in range(stop):
        next(it)
    state = first.state_dict()
    resumed = _train(plan, local_store, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed.epoch_with_ts(2))
    assert len(rest) == len(full) - stop
    for got, want in zip(rest, full[stop:], strict=True):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
    assert resumed.state_dict()["epoch"] == 3
    with pytest.raises(ValueError, match="seed"):
        _train(plan, local_store, **{**kw, "seed": 6}).load_state_dict(state)
    with pytest.raises(ValueError, match="window"):
        _train(plan, local_store, **{**kw, "window": window + 1}).load_state_dict(state)


def test_the_first_buffer_read_ahead_is_served_from_what_was_read(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    kw = {"seed": 5, "shuffle_buffer_row_groups": 3}
    full = list(_train(plan, local_store, **kw).epoch_with_ts(0))
    loader = _train(plan, local_store, **kw)
    reads = loader.read_ahead()
    assert len(reads) == 3
    wait(reads)
    for info in plan.partitions:  # every byte of the data gone, in place
        path = local_store.path(info.data)  # type: ignore[attr-defined]
        path.write_bytes(b"\x00" * path.stat().st_size)
    got = []
    with pytest.raises(DataError, match="row group"):
        for batch in loader.epoch_with_ts(0):
            got.append(batch)
    first_rows = sum(r.result().rows for r in reads)
    assert len(got) == first_rows // BATCH  # the first buffer's batches, then the failure
    for a, b in zip(got, full, strict=False):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert loader.stats.row_groups_read == 3  # each read once; the next one failed


@pytest.mark.parametrize("ahead_first", [True, False])
def test_a_resumed_epoch_drops_or_takes_up_the_reads_begun_ahead(
    plan: DatasetPlan, local_store: ObjectStore, ahead_first: bool
) -> None:
    kw = {"seed": 5, "shuffle_buffer_row_groups": 3}
    full = list(_train(plan, local_store, **kw).epoch_with_ts(0))
    first = _train(plan, local_store, **kw)
    it = first.epoch_with_ts(0)
    for _ in range(9):  # into the second buffer
        next(it)
    assert first.state_dict()["chunk"] == 1
    resumed = _train(plan, local_store, **kw)
    if ahead_first:  # as a job does: the head start before the checkpoint is restored
        reads = resumed.read_ahead()
        resumed.load_state_dict(first.state_dict())
    else:
        resumed.load_state_dict(first.state_dict())
        reads = resumed.read_ahead()
    wait(reads)
    rest = list(resumed.epoch_with_ts(0))
    assert len(rest) == len(full) - 9
    for got, want in zip(rest, full[9:], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True))
    # a dropped read gives its memory back; a taken-up one is not read again
    pooled = resumed.reader.buffers
    assert len(pooled.free) <= pooled.keep
    assert resumed.stats.row_groups_read == len(resumed.units) - 3


def test_iteration_advances_the_epoch(plan: DatasetPlan, local_store: ObjectStore) -> None:
    loader = StreamingLoader(plan, local_store, split="train", batch_size=BATCH)
    first = [y for _, y in loader]
    second = [y for _, y in loader]
    assert loader.state_dict()["epoch"] == 2
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=False))
    with pytest.raises(ValueError, match="with_ts"):
        next(loader.epoch_with_ts(0))


def test_corrupt_or_missing_data_raises_data_error_naming_it(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    path = local_store.path(plan.partitions[1].data)  # type: ignore[attr-defined]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # torn: no footer
    loader = StreamingLoader(plan, local_store, split="train", batch_size=BATCH)
    with pytest.raises(DataError) as err:
        list(loader.epoch(0))
    assert local_store.uri(plan.partitions[1].data) in str(err.value)
    footer = raw[-(64 << 10) :]
    path.write_bytes(b"\x00" * (len(raw) - len(footer)) + footer)  # pages zeroed
    with pytest.raises(DataError, match="row group"):
        list(StreamingLoader(plan, local_store, split="train", batch_size=BATCH).epoch(0))
    path.unlink()
    with pytest.raises(DataError) as err:
        compute_feature_stats(plan, local_store)
    assert local_store.uri(plan.partitions[1].data) in str(err.value)


def test_readers_take_the_footers_from_the_preflight(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    src = _source(local_store, plan)
    want = _expected(src, src["ts"] < plan.bounds.train_end_ms)
    # Blank every footer in place: a reader that parsed one again would fail.
    for info in plan.partitions:
        path = local_store.path(info.data)  # type: ignore[attr-defined]
        raw = bytearray(path.read_bytes())
        footer_len = int.from_bytes(raw[-8:-4], "little")
        raw[-8 - footer_len : -8] = bytes(footer_len)
        path.write_bytes(bytes(raw))
    files = PartitionFiles(plan, local_store)
    assert Counter(_keys(_train(plan, local_store, files=files).epoch_with_ts(0))) == want
    assert compute_feature_stats(plan, local_store, files=files).rows == sum(want.values())
    # A file that changed size since the pre-flight is refused, never misread.
    path = local_store.path(plan.partitions[0].data)  # type: ignore[attr-defined]
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="changed since") as err:
        list(_train(plan, local_store).epoch(0))
    assert local_store.uri(plan.partitions[0].data) in str(err.value)


def test_second_epoch_comes_from_the_cache(plan: DatasetPlan, local_store: ObjectStore) -> None:
    cache = BlockCache(64 << 20)
    loader = StreamingLoader(plan, local_store, split="train", batch_size=BATCH, cache=cache)
    first = sum(len(y) for _, y in loader.epoch(0))
    assert loader.stats.row_groups_read == len(loader.units) and loader.stats.cache_hits == 0
    second = sum(len(y) for _, y in loader.epoch(1))
    s = loader.stats
    assert (s.bytes_read, s.row_groups_read, s.cache_hits) == (0, 0, len(loader.units))
    assert first == second and s.dropped_non_finite > 0


def test_a_cache_too_small_serves_each_later_epoch_the_share_that_fits(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    src = _source(local_store, plan)
    want = _expected(src, src["ts"] < plan.bounds.train_end_ms)
    full = BlockCache(64 << 20)
    list(_train(plan, local_store, cache=full).epoch(0))
    small = BlockCache(full.bytes // 3)
    loader = _train(plan, local_store, cache=small, shuffle_buffer_row_groups=2)
    for epoch in range(4):
        assert Counter(_keys(loader.epoch_with_ts(epoch))) == want  # memory is never mixed up
        kept = len(small)
        if epoch:  # the blocks kept in epoch 0 are all served again, whatever the new order
            assert loader.stats.cache_hits == kept
            assert loader.stats.row_groups_read == len(loader.units) - kept
    assert small.bytes <= small.max_bytes and small.refused > 0
    assert abs(kept / len(loader.units) - 1 / 3) < 0.1


def test_two_ranks_deal_row_groups_once_so_each_cache_serves_its_own_rank(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    loaders = [
        _train(plan, local_store, rank=r, world_size=2, seed=3, cache=BlockCache(64 << 20))
        for r in (0, 1)
    ]
    for epoch in range(3):
        shards = [{(u.part, u.group) for u in ld._rank_units(epoch, ld.rank)} for ld in loaders]
        assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == len(loaders[0].units)
        for loader in loaders:
            list(loader.epoch(epoch))
            hits = loader.stats.cache_hits
            assert hits == (len(loader._rank_units(epoch, loader.rank)) if epoch else 0)
    # a rank's row groups stay the same, the order it visits them in does not
    rank0 = loaders[0]
    assert rank0._rank_units(0, 0) != rank0._rank_units(1, 0)
    assert set(rank0._rank_units(0, 0)) == set(rank0._rank_units(1, 0))


def _training_features(store: ObjectStore, plan: DatasetPlan) -> np.ndarray:
    """The features of every finite training row, in float64."""
    src = _source(store, plan)
    keep = (src["ts"] < plan.bounds.train_end_ms) & np.isfinite(src["y"])
    keep &= np.isfinite(src["x"]).all(axis=1)
    return np.asarray(src["x"][keep], np.float64)


def test_feature_stats_from_training_rows_warm_the_cache(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    x = _training_features(local_store, plan)
    cache = BlockCache(64 << 20)
    stats = compute_feature_stats(plan, local_store, cache=cache)
    assert stats.rows == len(x) and stats.row_groups == stats.of_row_groups
    assert stats.mean_error == stats.std_error == 0.0  # every row group read: exact
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.std, x.std(axis=0), rtol=1e-6)
    loader = StreamingLoader(plan, local_store, split="train", batch_size=BATCH, cache=cache)
    list(loader.epoch(0))
    assert loader.stats.bytes_read == 0 and loader.stats.cache_hits == len(loader.units)
    few = compute_feature_stats(plan, local_store, max_rows=700)
    assert few.rows == 700


def test_sampled_feature_stats_stay_inside_their_stated_error(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    x = _training_features(local_store, plan)
    stats = compute_feature_stats(plan, local_store, sample_rows=3000)
    assert stats.row_groups == 6 < stats.of_row_groups
    assert 0 < stats.mean_error < 0.2 and 0 < stats.std_error < 0.2
    # within four of its own standard errors, feature by feature
    assert np.all(np.abs(stats.mean - x.mean(axis=0)) <= 4 * stats.mean_error * stats.std)
    assert np.all(np.abs(stats.std / x.std(axis=0) - 1) <= 4 * stats.std_error)


def test_block_moments_in_float32_keep_large_offsets() -> None:
    rng = np.random.default_rng(0)
    x64 = 1e4 + rng.standard_normal((100_000, 3)) * np.array([1.0, 1e-2, 1e2])
    x = torch.from_numpy(x64.astype(np.float32))
    mean, m2 = _moments(x)
    exact = x.numpy().astype(np.float64)
    std = exact.std(axis=0)
    assert np.all(np.abs(mean - exact.mean(axis=0)) < 1e-6 * std)
    np.testing.assert_allclose(m2, ((exact - exact.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-5)


def test_the_sample_spreads_over_every_day_and_symbol(plan: DatasetPlan) -> None:
    units = split_units(plan, split_spec(plan, "train"), time_order=False)
    picked = sample_units(plan, units, 4 * 500)
    assert len(picked) == 4 and len(set(picked)) == 4
    days = Counter(plan.partitions[u.part].part.date for u in picked)
    symbols = Counter(plan.partitions[u.part].part.symbol for u in picked)
    assert days == Counter({DATES[0]: 2, DATES[1]: 2})
    assert set(symbols) == set(SYMBOLS)
    assert len({u.group for u in picked}) > 1  # not the same hour of every day
    assert sample_units(plan, units, 10**9) == units


def test_the_sample_takes_the_first_buffer_where_its_strata_allow(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    units = split_units(plan, split_spec(plan, "train"), time_order=False)
    per_day = Counter(plan.partitions[u.part].part.date for u in sample_units(plan, units, 2000))
    overlap = 0
    for seed in range(8):
        loader = _train(plan, local_store, seed=seed, shuffle_buffer_row_groups=3)
        ahead = loader.first_buffer()
        picked = sample_units(plan, units, 4 * 500, ahead)
        assert len(set(picked)) == 4 and ahead[0] in picked  # the earliest leads its stratum
        days = Counter(plan.partitions[u.part].part.date for u in picked)
        assert days == per_day  # still two of each day
        overlap += len(set(picked) & set(ahead))
        # one pick for both days: the row group training reads first
        assert sample_units(plan, units, 500, ahead) == [ahead[0]]
    assert overlap > 8  # mostly more than the first one
    assert sample_units(plan, units, 4 * 500, ()) == sample_units(plan, units, 4 * 500)


def test_the_first_buffer_the_sample_took_is_served_from_the_cache(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    kw = {"seed": 3, "shuffle_buffer_row_groups": 3, "with_ts": False}  # as a job's
    full = list(_train(plan, local_store, **kw).epoch(0))
    cache = BlockCache(64 << 20)
    loader = _train(plan, local_store, cache=cache, **kw)
    first = loader.first_buffer()
    sampled = stats_units(plan, loader.units, None, 4 * 500, first)
    taken = set(sampled) & set(first)
    assert taken and len(loader.read_ahead(skip=sampled)) == len(first) - len(taken)
    compute_feature_stats(plan, local_store, cache=cache, sample=sampled)
    got = list(loader.epoch(0))
    assert len(got) == len(full)
    for a, b in zip(got, full, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    s = loader.stats
    assert s.cache_hits == len(sampled)  # the whole sample, the first buffer's share included
    assert s.row_groups_read == len(loader.units) - len(sampled)


def test_max_rows_and_drop_last(plan: DatasetPlan, local_store: ObjectStore) -> None:
    sizes = [
        len(y)
        for _, y in StreamingLoader(
            plan, local_store, split="train", batch_size=BATCH, max_rows=1000
        ).epoch(0)
    ]
    assert sum(sizes) == 1000 and sizes[-1] == 1000 % BATCH
    kept = [
        len(y)
        for _, y in StreamingLoader(
            plan, local_store, split="train", batch_size=BATCH, drop_last=True
        ).epoch(0)
    ]
    assert set(kept) == {BATCH}


def test_batch_segments_cover_each_position_once() -> None:
    served = [np.arange(0, 20, 2), np.arange(0), np.arange(13)]  # block 0 skips odd rows
    order = np.random.default_rng(0).permutation(23)
    local, segs = batch_segments(served, order, start=2, first=3, batch=5)
    assert [(s.start, s.end) for s in segs] == [(2, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    got = []
    for s in segs:
        for k in range(3):
            got += [(k, int(r)) for r in local[s.cuts[k] : s.cuts[k + 1]]]
    flat = [(k, int(r)) for k, rows in enumerate(served) for r in rows]
    assert sorted(got) == sorted(flat[i] for i in order[2:])


def test_streams_from_s3(s3_store: ObjectStore, layout: Layout) -> None:
    plan = _dataset(s3_store, layout, dataclasses.replace(CFG, rows_per_day=1500))
    src = _source(s3_store, plan)
    loader = _train(plan, s3_store, files_in_flight=2)
    assert Counter(_keys(loader.epoch_with_ts(0))) == _expected(
        src, src["ts"] < plan.bounds.train_end_ms
    )
    assert loader.stats.bytes_read > 0
    s3_store.delete(plan.partitions[0].data)
    with pytest.raises(DataError, match=str(plan.partitions[0].data)):
        list(_train(plan, s3_store).epoch(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_blocks_reach_cuda_through_pinned_memory(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    cpu = list(StreamingLoader(plan, local_store, split="train", batch_size=BATCH).epoch(0))
    cache = BlockCache(64 << 20, device="cuda")
    gpu = StreamingLoader(
        plan, local_store, split="train", batch_size=BATCH, device="cuda", cache=cache
    )
    for epoch in (0, 1):
        got = list(gpu.epoch(0))
        torch.cuda.synchronize()
        assert len(got) == len(cpu)
        for (x, y), (cx, cy) in zip(got, cpu, strict=True):
            assert x.is_cuda and y.is_cuda
            assert torch.equal(x.cpu(), cx) and torch.equal(y.cpu(), cy)
        assert gpu.stats.cache_hits == (len(gpu.units) if epoch else 0)


def test_cache_budget_from_the_spec_or_free_memory() -> None:
    cpu = torch.device("cpu")
    assert cache_budget(cpu, 1.5) == 1_500_000_000 and cache_budget(cpu, 0.0) == 0
    available = host_available_bytes()
    assert 0 < available < 1 << 50
    auto = cache_budget(cpu, None)
    assert abs(auto - available / 2) < 0.1 * available  # memory moves while we look
    assert abs(cache_budget(cpu, None, local_ranks=4) - auto / 4) < 0.1 * available


@pytest.mark.parametrize(
    ("date", "group"),
    [(DATES[0], 0), (DATES[1], 5), (DATES[2], 0), (DATES[2], 3)],
    ids=["first-train", "last-train", "first-val", "mid-val"],
)
def test_a_row_group_without_usable_rows_ends_no_pass(
    local_store: ObjectStore, layout: Layout, date: str, group: int
) -> None:
    cfg = dataclasses.replace(CFG, feature_nan_rate=0.0)
    generate(local_store, layout, "binance", "bbo", SYMBOLS, DATES, cfg)
    rg = cfg.row_group_size
    part = Partition("binance", "bbo", SYMBOLS[0], date)
    write_day(
        local_store, layout, part, cfg, lambda t: nan_rows(t, "label", group * rg, (group + 1) * rg)
    )
    plan = preflight(_spec(), local_store, layout)
    want = recount(local_store, plan)
    stats = compute_feature_stats(plan, local_store)
    assert stats.rows == want["train"] and stats.counts is not None
    assert stats.counts.used == want["train"] and stats.counts.read == stats.counts.planned
    tally = Tally("validation")
    _, y, _ = read_split_arrays(plan, local_store, "val", tally=tally)
    assert len(y) == want["val"] == tally.used and tally.dropped == rg * (date == DATES[2])
    assert (
        tally.groups
        == tally.planned_groups
        == len(split_units(plan, split_spec(plan, "val"), True))
    )
    for buffer in (1, 4):
        loader = _train(plan, local_store, shuffle_buffer_row_groups=buffer)
        assert sum(len(b[1]) for b in loader.epoch(0)) == want["train"]
        assert loader.first_epoch is not None and loader.first_epoch.used == want["train"]
        assert loader.first_epoch.complete and loader.epochs_read == 1
    # windows: the samples served are what the epoch counts, and every row read has a place
    windowed = _train(plan, local_store, window=8)
    served = sum(len(b[1]) for b in windowed.epoch(0))
    counted = windowed.first_epoch
    assert counted is not None and counted.complete and counted.used == served
    assert counted.outside >= 0 and counted.short > 0
    assert counted.dropped >= 0.8 * rg * (date == DATES[0])


def test_a_pass_that_misses_a_planned_row_group_fails_naming_it(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    units = split_units(plan, split_spec(plan, "train"), time_order=False)
    tally = Tally.of("training", units)
    with pytest.raises(DataError, match=f"read 0 of its {len(units)} planned row groups"):
        tally.check()
