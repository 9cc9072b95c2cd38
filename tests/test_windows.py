"""Lookback windows on generated partitions: every window is the partition's own rows read
straight from the file, never across a partition, each sample once per epoch whatever the
shuffle, the ranks, the cache or a resume; validation reaching back before its start; rows
out of time order refused by name."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from tests.helpers import Quiet, write_day
from trainer.data.blocks import BlockSpec, Unit
from trainer.data.loader import BlockCache, StreamingLoader
from trainer.data.order import seams
from trainer.data.passes import read_split
from trainer.data.plan import DatasetPlan, preflight
from trainer.data.synth import SynthConfig, generate
from trainer.data.windows import Windows, window_ends
from trainer.errors import DataError
from trainer.spec.sections import DataSpec, TrainSpec
from trainer.store import ObjectStore
from trainer.store.layout import Layout, Partition
from trainer.train.loop import Validation, fit, step_budget

SYMBOLS = ("btcusdt", "ethusdt")
DATES = ("20250101", "20250102", "20250103")
CFG = SynthConfig(rows_per_day=1500, n_features=4, row_group_size=250, feature_nan_rate=0.002)
BATCH = 128
L = 32


def _spec(**split: object) -> DataSpec:
    return DataSpec(
        exchange="binance",
        stream="bbo",
        symbols=SYMBOLS,
        dates={"start": DATES[0], "end": DATES[-1]},  # type: ignore[arg-type]
        split=split or {"validation_days": 1, "purge_sec": 1800},  # type: ignore[arg-type]
        window=L,
    )


def _dataset(
    store: ObjectStore, layout: Layout, cfg: SynthConfig = CFG, **split: object
) -> DatasetPlan:
    generate(store, layout, "binance", "bbo", SYMBOLS, DATES, cfg)
    return preflight(_spec(**split), store, layout)


@pytest.fixture
def plan(local_store: ObjectStore, layout: Layout) -> DatasetPlan:
    return _dataset(local_store, layout)


class Source:
    """Every partition read whole with plain pyarrow, and the samples a window of `L` over
    a split must give, worked out row by row the slow, obvious way."""

    def __init__(self, store: ObjectStore, plan: DatasetPlan, window: int = L) -> None:
        fs = store.arrow_fs()
        self.parts = []
        for info in plan.partitions:
            t = pq.read_table(store.arrow_path(info.data), filesystem=fs)
            x = np.column_stack([t.column(f).to_numpy() for f in plan.features])
            self.parts.append(
                (t.column("ts").to_numpy(), x.astype(np.float32), t.column("label").to_numpy())
            )
        self.window = window
        self.at = {}
        for p, (ts, _x, y) in enumerate(self.parts):
            for r, key in enumerate(zip(ts.tolist(), y.tolist(), strict=True)):
                assert key not in self.at  # (ts, label) names one row of the dataset
                self.at[key] = (p, r)

    def samples(self, keep: object) -> Counter[tuple[int, float]]:
        """(ts, label) of every row whose window is a sample of the split `keep(ts)`."""
        out: Counter[tuple[int, float]] = Counter()
        for ts, x, y in self.parts:
            for r in range(self.window - 1, len(ts)):
                window = x[r - self.window + 1 : r + 1]
                if keep(ts[r]) and np.isfinite(y[r]) and np.isfinite(window).all():  # type: ignore[operator]
                    out[(int(ts[r]), float(y[r]))] += 1
        return out

    def window_of(self, ts: int, label: float) -> np.ndarray:
        p, r = self.at[(ts, label)]
        return self.parts[p][1][r - self.window + 1 : r + 1]


def _train(plan: DatasetPlan, store: ObjectStore, **kw: object) -> StreamingLoader:
    args: dict[str, object] = {"split": "train", "batch_size": BATCH, "with_ts": True, "window": L}
    return StreamingLoader(plan, store, **{**args, **kw})  # type: ignore[arg-type]


def _keys(loader: StreamingLoader, epoch: int) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    for _x, y, ts in loader.epoch_with_ts(epoch):
        out += zip(ts.tolist(), y.tolist(), strict=True)
    return out


def _check_windows(src: Source, batches: list[tuple[torch.Tensor, ...]]) -> int:
    """Every delivered window equals the rows read straight from the file, element for
    element; returns how many crossed a row-group boundary."""
    crossing = 0
    for x, y, ts in batches:
        assert x.shape == (len(y), src.window, x.shape[2]) and x.dtype == torch.float32
        for i, key in enumerate(zip(ts.tolist(), y.tolist(), strict=True)):
            np.testing.assert_array_equal(x[i].numpy(), src.window_of(*key))
            row = src.at[key][1]
            crossing += (row - src.window + 1) // CFG.row_group_size != row // CFG.row_group_size
    return crossing


def test_windows_equal_the_rows_read_straight_from_the_file(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    src = Source(local_store, plan)
    loader = _train(plan, local_store, shuffle_buffer_row_groups=3)
    batches = list(loader.epoch_with_ts(0))
    want = src.samples(lambda t: t < plan.bounds.train_end_ms)
    got = Counter(k for _x, y, ts in batches for k in zip(ts.tolist(), y.tolist(), strict=True))
    assert got == want  # every sample once, none that is not one
    assert _check_windows(src, batches) > 100  # many windows span a row-group boundary
    # the rows that are no sample are counted: too little history, a non-finite value
    train_parts = 2 * len(SYMBOLS)
    assert loader.stats.short_history == train_parts * (L - 1)
    assert loader.stats.dropped_non_finite > 0
    # each row group was read once: seams came from the edges, not from a second read
    assert loader.stats.row_groups_read == len(loader.units)


def test_row_groups_shorter_than_the_window_still_give_every_window(
    local_store: ObjectStore, layout: Layout
) -> None:
    cfg = dataclasses.replace(CFG, rows_per_day=600, row_group_size=20)  # windows span 3 groups
    plan = _dataset(local_store, layout, cfg)
    src = Source(local_store, plan)
    batches = list(_train(plan, local_store).epoch_with_ts(1))
    want = src.samples(lambda t: t < plan.bounds.train_end_ms)
    keys = [k for _x, y, ts in batches for k in zip(ts.tolist(), y.tolist(), strict=True)]
    assert Counter(keys) == want
    _check_windows(src, batches)


def test_a_batch_mixes_windows_of_many_row_groups(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    src = Source(local_store, plan)
    first = _keys(_train(plan, local_store, seed=4), 0)[:BATCH]
    rows = [src.at[k] for k in first]
    assert len({(p, r // CFG.row_group_size) for p, r in rows}) >= 3
    assert _keys(_train(plan, local_store, seed=4), 0)[:BATCH] == first
    assert _keys(_train(plan, local_store, seed=5), 0)[:BATCH] != first


def test_two_ranks_share_the_windows_exactly_once(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    src = Source(local_store, plan)
    ranks = [_train(plan, local_store, rank=r, world_size=2, seed=3) for r in (0, 1)]
    got = [Counter(_keys(loader, 1)) for loader in ranks]
    assert not set(got[0]) & set(got[1])
    assert got[0] + got[1] == src.samples(lambda t: t < plan.bounds.train_end_ms)
    assert all(loader.stats.rows > 0 for loader in ranks)


def test_the_cache_serves_the_same_windows(plan: DatasetPlan, local_store: ObjectStore) -> None:
    cache = BlockCache(64 << 20)
    loader = _train(plan, local_store, cache=cache)
    first = Counter(_keys(loader, 0))
    second = Counter(_keys(loader, 1))
    assert first == second
    assert loader.stats.cache_hits == len(loader.units) and loader.stats.bytes_read == 0


def test_validation_windows_reach_back_before_the_validation_start(
    local_store: ObjectStore, layout: Layout
) -> None:
    plan = _dataset(local_store, layout, validation_fraction=0.3)
    val_start = plan.bounds.val_start_ms
    src = Source(local_store, plan)
    split = read_split(plan, local_store, "val", window=L)
    assert Counter(zip(split.ts.tolist(), split.y.tolist(), strict=True)) == src.samples(
        lambda t: t >= val_start
    )
    assert np.all(np.diff(split.ts) >= 0) and split.ts.min() >= val_start
    windows = split.inputs(slice(None))
    assert windows.shape == (len(split), L, len(plan.features))
    for i in range(0, len(split), 97):
        np.testing.assert_array_equal(
            windows[i], src.window_of(int(split.ts[i]), float(split.y[i]))
        )
    # the first validation windows of the day take rows from before the validation start
    assert split.row_ts is not None and split.ends is not None
    assert split.row_ts[split.ends[0] - L + 1] < val_start
    # the loader's validation stream gives the same samples
    loader = StreamingLoader(plan, local_store, split="val", batch_size=BATCH, window=L)
    assert Counter(_keys(loader, 0)) == Counter(
        zip(split.ts.tolist(), split.y.tolist(), strict=True)
    )
    # and `Windows` gathers the same windows on the device side
    device_side = Windows(torch.from_numpy(split.x), torch.from_numpy(split.ends), L)
    assert torch.equal(device_side[5:9], torch.from_numpy(windows[5:9]))


class PartitionGuard(nn.Module):
    """A sequence model that fails whenever its input mixes two partitions: feature `code`
    holds a number unique to each partition, so every row of a window must share it."""

    def __init__(self, n_features: int, code: int) -> None:
        super().__init__()
        self.code, self.head = code, nn.Linear(n_features, 1)
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = x[:, :, self.code]
        if not torch.equal(codes, codes[:, -1:].expand_as(codes)):
            raise AssertionError("a window mixed two partitions")
        self.windows += len(x)
        return self.head(x.mean(dim=1)).squeeze(-1)


def test_a_model_that_fails_on_a_mixed_window_trains_to_the_end_with_windows_of_64(
    local_store: ObjectStore, layout: Layout
) -> None:
    cfg = dataclasses.replace(CFG, rows_per_day=2000, row_group_size=150)
    for symbol in SYMBOLS:
        for date in DATES:
            code = np.float32(SYMBOLS.index(symbol) * 100 + DATES.index(date))

            def encode(table: pa.Table, code: np.float32 = code) -> dict[str, np.ndarray]:
                return {"ret_1s": np.full(table.num_rows, code, np.float32)}

            write_day(local_store, layout, Partition("binance", "bbo", symbol, date), cfg, encode)
    window = 64
    plan = preflight(_spec().model_copy(update={"window": window}), local_store, layout)
    j, nf = plan.features.index("ret_1s"), len(plan.features)
    guard = PartitionGuard(nf, j)
    # the guard is not blind: a window across the seam of two partitions fails it
    mixed = torch.zeros(1, window, nf)
    mixed[0, window // 2 :, j] = 1.0
    with pytest.raises(AssertionError, match="mixed two partitions"):
        guard(mixed)

    loader = _train(plan, local_store, window=window, shuffle_buffer_row_groups=4, seed=9)
    split = read_split(plan, local_store, "val", window=window)
    assert split.ends is not None
    val = Validation(
        Windows(torch.from_numpy(split.x), torch.from_numpy(split.ends), window), split.y
    )
    train = TrainSpec(epochs=2, batch_size=BATCH, eval_every_steps=10, warmup_steps=1)
    samples = sum(len(y) for _x, y, _ts in loader.epoch_with_ts(0))
    steps = step_budget(train, -(-samples // BATCH))
    result = fit(guard, loader, val, train, torch.device("cpu"), steps, Quiet())
    # every step and every evaluation ran: two whole epochs of shuffled row groups
    assert result.state.step == steps and result.state.rows_seen == 2 * samples
    assert guard.windows >= 2 * samples + len(split)  # and validation, whole, at the end


def test_rows_out_of_time_order_are_refused_naming_the_partition(
    local_store: ObjectStore, layout: Layout
) -> None:
    _dataset(local_store, layout)
    part = Partition("binance", "bbo", SYMBOLS[1], DATES[1])

    def swap(table: pa.Table) -> dict[str, np.ndarray]:
        ts = table.column("ts").to_numpy().copy()
        ts[300], ts[301] = ts[301] + 1, ts[300]  # inside row group 1: only the rows show it
        return {"ts": ts}

    table = write_day(local_store, layout, part, CFG, swap)
    plan = preflight(_spec(), local_store, layout)
    with pytest.raises(DataError, match="timestamps go back") as err:
        list(_train(plan, local_store).epoch(0))
    assert "symbol=ethusdt/date=20250102" in str(err.value) and "row group 1" in str(err.value)
    # whole row groups out of order: the pre-flight sees it in the statistics
    reordered = pa.concat_tables([table.slice(750), table.slice(0, 750)])
    write_day(local_store, layout, part, CFG, table=reordered)
    with pytest.raises(DataError) as err:
        preflight(_spec(), local_store, layout)
    assert "date 20250102, symbol ethusdt: timestamps go back" in str(err.value)
    # one row per sample needs no order, and keeps working
    preflight(_spec().model_copy(update={"window": 1}), local_store, layout)


def test_non_finite_fail_names_the_windows(plan: DatasetPlan, local_store: ObjectStore) -> None:
    with pytest.raises(DataError, match="window"):
        list(_train(plan, local_store, non_finite="fail").epoch(0))


def test_window_ends_by_the_rules() -> None:
    found = window_ends(
        10,
        np.array([True] * 8 + [False] * 2),
        bad_features=np.array([5]),
        bad_labels=np.array([3]),
        window=3,
    )
    # rows 0-1 lack history; 3 has a NaN label; 5, 6, 7 hold row 5; 8, 9 are outside
    assert found.ends.tolist() == [2, 4] and found.short == 2 and found.dropped == 4


def test_a_seam_goes_to_the_buffer_of_its_last_row_group(plan: DatasetPlan) -> None:
    spec = BlockSpec(plan.features, plan.label, plan.timestamp, None, None, (0, 0), window=L)
    units = [Unit(0, g, 250, None, None, 250 * g) for g in (3, 0, 1, 2)]
    placed = seams(plan, units, spec.window, buffer=1)
    owners = [[(s.owner.group, [u.group for u in s.earlier]) for s in b] for b in placed]
    # 2|3 and 1|2 go with group 2 (visited last), 0|1 with group 1
    assert owners == [[], [], [(1, [0])], [(3, [2]), (2, [1])]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_windows_are_gathered_on_cuda_as_on_the_cpu(
    plan: DatasetPlan, local_store: ObjectStore
) -> None:
    cpu = list(_train(plan, local_store, seed=2).epoch_with_ts(0))
    cache = BlockCache(64 << 20, device="cuda")
    gpu = _train(plan, local_store, seed=2, device="cuda", cache=cache)
    for epoch in (0, 0):
        got = list(gpu.epoch_with_ts(epoch))
        torch.cuda.synchronize()
        assert len(got) == len(cpu)
        for (x, y, ts), (cx, cy, cts) in zip(got, cpu, strict=True):
            assert x.is_cuda and x.shape == (len(y), L, cx.shape[2])
            assert torch.equal(x.cpu(), cx) and torch.equal(y.cpu(), cy)
            assert torch.equal(ts.cpu(), cts)
    assert gpu.stats.cache_hits == len(gpu.units)
