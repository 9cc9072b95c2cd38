"""Passes outside the training loop: normalization statistics from a day-stratified sample of
the training rows (warming the cache on the way) and a split as arrays for evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from trainer.data.blocks import BlockSpec, Unit, in_window
from trainer.data.cache import BlockCache
from trainer.data.order import partition_units, sample_units, split_units
from trainer.data.plan import DatasetPlan
from trainer.data.prefetch import BlockReader, PartitionFiles
from trainer.data.tally import Tally
from trainer.data.windows import check_time_order, window_ends
from trainer.errors import DataError
from trainer.store.base import ObjectStore
from trainer.store.records import PassRows

Split = Literal["train", "val"]

STATS_SAMPLE_ROWS = 1_000_000
"""Rows the feature statistics read, about: a day-stratified sample of whole row groups."""
RUN_ROWS = 1024
"""Rows summed in float32 at a time before the runs' sums are added up in float64."""


def split_spec(
    plan: DatasetPlan, split: Split, with_ts: bool = False, window: int = 1
) -> BlockSpec:
    """The block spec of a split: its purged window, timestamps kept for validation, and the
    rows per sample."""
    b = plan.bounds
    return BlockSpec(
        features=plan.features,
        label=plan.label,
        timestamp=plan.timestamp,
        lo=b.val_start_ms if split == "val" else None,
        hi=b.train_end_ms if split == "train" else None,
        gap=(b.train_end_ms, b.val_start_ms),
        keep_ts=with_ts or split == "val",
        window=window,
    )


def _reader(
    plan: DatasetPlan,
    store: ObjectStore,
    spec: BlockSpec,
    cache: BlockCache | None,
    policy: str,
    files: PartitionFiles | None,
    units: Sequence[Unit],
) -> BlockReader:
    device = cache.device if cache is not None else torch.device("cpu")
    ahead = max(min(4, len(units)), 1)  # never read further ahead than the pass will go
    return BlockReader(
        plan,
        store,
        spec,
        device=device,
        files_in_flight=min(3, ahead),
        ahead=ahead,
        cache=cache,
        non_finite=policy,
        files=files,
    )


def _enough(units: list[Unit], max_rows: int | None) -> list[Unit]:
    """The first units whose footer rows reach `max_rows` (all of them when None)."""
    if max_rows is None:
        return units
    total = 0
    for i, u in enumerate(units):
        total += u.rows
        if total >= max_rows:
            return units[: i + 1]
    return units


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and standard deviation of the training rows, from a sample of row
    groups, with the standard errors that the sample's own spread implies."""

    mean: np.ndarray
    std: np.ndarray
    """Floored at `min_std`."""
    rows: int
    """Training rows in the sample, after the purge and the non-finite filter."""
    row_groups: int
    """Row groups sampled..."""
    of_row_groups: int
    """... of the training split's."""
    mean_error: float
    """The largest standard error of a feature's mean, in that feature's standard
    deviations: 0 when every row group was read."""
    std_error: float
    """The largest relative standard error of a feature's standard deviation."""
    counts: PassRows | None = None
    """The rows the sample planned, read, dropped and used."""


def compute_feature_stats(
    plan: DatasetPlan,
    store: ObjectStore,
    *,
    cache: BlockCache | None = None,
    non_finite: Literal["drop", "fail"] = "drop",
    max_rows: int | None = None,
    min_std: float = 1e-6,
    files: PartitionFiles | None = None,
    sample_rows: int = STATS_SAMPLE_ROWS,
    window: int = 1,
    sample: Sequence[Unit] | None = None,
) -> FeatureStats:
    """Mean and standard deviation of the training rows (after the purge and the non-finite
    filter), from a day-stratified sample of about `sample_rows` rows in whole row groups
    (`order.sample_units`; every row group when the split is no larger), so the first
    training step waits for a bounded read whatever the number of days.

    Each block's moments are accumulated in float32 (in runs of `RUN_ROWS` rows, so no
    float32 sum runs long) and the blocks are merged in float64 (Chan et al.), so large
    offsets do not cancel. The standard errors come from the spread between the sampled
    row groups (cluster sampling without replacement), which also covers days or hours
    that differ from each other. Blocks read go into `cache`, which epoch 1 then serves
    (`window`: the training loader's, so that they are the blocks it asks for; the
    statistics are those of the rows whatever the window; `sample`: the row groups to
    read, chosen already by a caller with `stats_units`, which can make the sample take
    the row groups the training loader reads first and read ahead around them)."""
    spec = split_spec(plan, "train", window=window)
    population = split_units(plan, spec, time_order=False)
    units = stats_units(plan, population, max_rows, sample_rows) if sample is None else sample
    reader = _reader(plan, store, spec, cache, non_finite, files, units)
    tally = Tally.of("feature statistics", units)
    counts: list[int] = []
    means: list[np.ndarray] = []
    m2s: list[np.ndarray] = []
    try:
        for unit, block, _ in reader.stream(units):
            take = block.rows if max_rows is None else min(block.rows, max_rows - sum(counts))
            # rows, not samples; a window's dropped count is of windows: left in `outside`
            tally.add(unit, block, reader.files.uri(unit.part), samples=False)
            tally.place(max(take, 0), block.dropped if window == 1 else 0, 0)
            if take > 0:
                b_mean, b_m2 = _moments(block.x[:take])
                counts.append(take)
                means.append(b_mean)
                m2s.append(b_m2)
            reader.release(block)  # the moments are computed: its memory may serve the next
            if max_rows is not None and sum(counts) >= max_rows:
                break
    finally:
        reader.close()
    if max_rows is None:
        tally.check()
    merged = _merge(counts, means, m2s, len(units), len(population), min_std, len(plan.features))
    return replace(merged, counts=tally.record())


def stats_units(
    plan: DatasetPlan,
    population: Sequence[Unit],
    max_rows: int | None = None,
    sample_rows: int = STATS_SAMPLE_ROWS,
    first: Sequence[Unit] = (),
) -> list[Unit]:
    """The row groups `compute_feature_stats` reads, of the training split's `population`."""
    budget = sample_rows if max_rows is None else min(sample_rows, max_rows)
    return _enough(sample_units(plan, population, budget, first), max_rows)


def _merge(
    counts: list[int],
    means: list[np.ndarray],
    m2s: list[np.ndarray],
    sampled: int,
    population: int,
    min_std: float,
    nf: int,
) -> FeatureStats:
    """The blocks' moments merged in float64, and the sample's standard errors."""
    rows, mean, m2 = 0, np.zeros(nf), np.zeros(nf)
    for n, b_mean, b_m2 in zip(counts, means, m2s, strict=True):
        total = rows + n
        delta = b_mean - mean
        mean += delta * (n / total)
        m2 += b_m2 + delta**2 * (rows * n / total)
        rows = total
    var = m2 / max(rows, 1)
    std = np.maximum(np.sqrt(var), min_std)
    mean_error = std_error = 0.0
    k = len(counts)
    if sampled < population and k >= 2:
        n_u = np.asarray(counts, np.float64)[:, None]
        unit_mean = np.stack(means)
        unit_sq = np.stack(m2s) / n_u + unit_mean**2  # each group's mean of squares
        shrink = (1.0 - sampled / population) * k / (k - 1)  # finite-population correction
        w = n_u / rows
        var_mean = shrink * (w**2 * (unit_mean - mean) ** 2).sum(axis=0)
        var_sq = shrink * (w**2 * (unit_sq - (var + mean**2)) ** 2).sum(axis=0)
        mean_error = float(np.max(np.sqrt(var_mean) / std))
        std_error = float(np.max(np.sqrt(var_sq) / (2 * np.maximum(var, min_std**2))))
    return FeatureStats(mean, std, rows, sampled, population, mean_error, std_error)


def _moments(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sum of squared deviations per column, accumulated in float32 and returned
    in float64: on the GPU with torch (tree reductions), on the CPU with numpy in runs of
    rows (numpy adds a row-major column one row at a time), single-threaded so that it
    does not fight the reading threads. One float32 temporary, no float64 copy."""
    if x.is_cuda:
        dev = x - x[:1]  # about the first row, as below
        step = dev.mean(0)
        dev -= step
        centre = x[0].double() + step.double()
        return centre.cpu().numpy(), (dev * dev).sum(0).double().cpu().numpy()
    xn = x.numpy()
    n = max(len(xn), 1)
    d = xn - xn[:1]  # about the first row: float32 sums of small deviations stay exact
    shift = _run_sums(d) / n
    d -= shift.astype(np.float32)
    # the deviations are about a float32-rounded mean: take out what that rounding adds
    rounding = shift - shift.astype(np.float32).astype(np.float64)
    np.multiply(d, d, out=d)
    mean = xn[0].astype(np.float64) + shift if len(xn) else shift
    return mean, np.maximum(_run_sums(d) - n * rounding**2, 0.0)


def _run_sums(x: np.ndarray) -> np.ndarray:
    """Column sums: float32 within runs of `RUN_ROWS` rows, float64 across them."""
    n, nf = x.shape
    whole = n - n % RUN_ROWS
    runs = x[:whole].reshape(-1, RUN_ROWS, nf).sum(axis=1)
    return runs.sum(axis=0, dtype=np.float64) + x[whole:].sum(axis=0, dtype=np.float64)


@dataclass(frozen=True)
class SplitRows:
    """A split's samples in time order, for evaluation and the exported predictions: the
    rows their inputs are made of and, with a window above 1, the row each sample ends at
    (so holding them costs the rows, not `window` times the rows)."""

    x: np.ndarray
    """float32 `[R, F]`: the samples' rows (window 1), or every row their windows take."""
    y: np.ndarray
    """float32 `[N]`: each sample's label."""
    ts: np.ndarray
    """int64 `[N]`: each sample's timestamp, its labelled row's, epoch milliseconds."""
    ends: np.ndarray | None = None
    """int64 `[N]`: the position in `x` of each sample's last row; None for window 1."""
    row_ts: np.ndarray | None = None
    """int64 `[R]`: the timestamps of the rows of `x`; None for window 1 (then `ts`)."""
    window: int = 1
    dropped: int = 0
    """Samples dropped for a non-finite value (with a window, anywhere in the window)."""
    short: int = 0
    """Rows with too few earlier rows in their partition for a window."""

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, pick: np.ndarray | slice) -> np.ndarray:
        """The chosen samples as the model takes them: `[n, F]`, or `[n, window, F]`."""
        if self.ends is None:
            return self.x[pick]
        rows = self.ends[pick][:, None] + np.arange(1 - self.window, 1)
        return self.x[rows]


def read_split(
    plan: DatasetPlan,
    store: ObjectStore,
    split: Split = "val",
    *,
    window: int = 1,
    cache: BlockCache | None = None,
    non_finite: Literal["drop", "fail"] = "drop",
    max_rows: int | None = None,
    files: PartitionFiles | None = None,
    tally: Tally | None = None,
) -> SplitRows:
    """A whole (small) split, or its first `max_rows` samples in time, sorted by time
    (stable). With a window above 1 each partition's row groups are read in file order
    together with the rows before the split that its first windows reach back to (past
    features, never labels). Reads no row group beyond what it returns. `tally` counts the
    rows, and the pass checks that it covered every row group it planned."""
    if window == 1:
        x, y, ts = read_split_arrays(
            plan,
            store,
            split,
            cache=cache,
            non_finite=non_finite,
            max_rows=max_rows,
            files=files,
            tally=tally,
        )
        return SplitRows(x, y, ts)
    spec = split_spec(plan, split, with_ts=True, window=window)
    wanted = _enough(split_units(plan, spec, time_order=True), max_rows)
    runs = _with_history(plan, wanted, window)
    units = [u for run in runs for u in run]
    reader = _reader(plan, store, spec, cache, non_finite, files, units)
    tally = (tally if tally is not None else Tally(split)).plan(units)
    xs, ys, tss, ends = [], [], [], []
    dropped = short = base = 0
    try:
        stream = reader.stream(units)
        for run in runs:
            blocks = []
            for unit, block, _ in (next(stream) for _ in run):
                tally.add(unit, block, reader.files.uri(unit.part), samples=False)
                blocks.append(block)
            x = np.concatenate([b.x_stored.cpu().numpy() for b in blocks])
            y = np.concatenate([b.y_stored.cpu().numpy() for b in blocks])
            ts = np.concatenate([b.ts.numpy() for b in blocks if b.ts is not None])
            for b in blocks:
                reader.release(b)
            try:
                check_time_order(ts, f"row groups {run[0].group}-{run[-1].group}")
            except ValueError as exc:
                uri = store.uri(plan.partitions[run[0].part].data)
                raise DataError("cannot read the dataset", [f"{uri}: {exc}"]) from None
            found = window_ends(
                len(y),
                in_window(ts, spec),
                np.flatnonzero(~np.isfinite(x).all(axis=1)),
                np.flatnonzero(~np.isfinite(y)),
                window,
            )
            xs.append(x)
            ys.append(y)
            tss.append(ts)
            ends.append(found.ends.astype(np.int64) + base)
            tally.place(len(found.ends), found.dropped, found.short)
            dropped, short, base = dropped + found.dropped, short + found.short, base + len(y)
    finally:
        reader.close()
    if max_rows is None:
        tally.check()
    if dropped and non_finite == "fail":
        raise DataError(
            "non-finite values in the data (data.non_finite is 'fail'; 'drop' skips them)",
            [f"{dropped} {split} window(s) of rows with a NaN or infinite label or feature"],
        )
    nf = len(plan.features)
    rows = np.concatenate(xs) if xs else np.empty((0, nf), np.float32)
    labels = np.concatenate(ys) if ys else np.empty(0, np.float32)
    row_ts = np.concatenate(tss) if tss else np.empty(0, np.int64)
    at = np.concatenate(ends) if ends else np.empty(0, np.int64)
    at = at[np.argsort(row_ts[at], kind="stable")][:max_rows]
    return SplitRows(rows, labels[at], row_ts[at], at, row_ts, window, dropped, short)


def _with_history(plan: DatasetPlan, units: Sequence[Unit], window: int) -> list[list[Unit]]:
    """Per partition, in file order, the row groups from the first that `units` needs back
    to `window - 1` rows before its first one, to its last one."""
    by_part: dict[int, list[Unit]] = {}
    for u in units:
        by_part.setdefault(u.part, []).append(u)
    runs = []
    for part, mine in sorted(by_part.items()):
        lo, hi = min(u.offset for u in mine), max(u.offset for u in mine)
        groups = partition_units(plan, part)
        start, need = lo, window - 1
        for g in reversed([g for g in groups if g.offset < lo]):
            if need <= 0:
                break
            start, need = g.offset, need - g.rows
        runs.append([g for g in groups if start <= g.offset <= hi])
    return runs


def read_split_arrays(
    plan: DatasetPlan,
    store: ObjectStore,
    split: Split = "val",
    *,
    cache: BlockCache | None = None,
    non_finite: Literal["drop", "fail"] = "drop",
    max_rows: int | None = None,
    files: PartitionFiles | None = None,
    tally: Tally | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole (small) split, or its first `max_rows` rows in time, as numpy
    `(X [N, F] float32, y [N] float32, ts [N] int64)`, sorted by time (stable), for
    evaluation and for exporting predictions. Reads no row group beyond what it returns,
    and every one up to there, also after one without a usable row. `tally` (named for the
    split) counts the rows; the pass checks it covered every row group it planned."""
    spec = split_spec(plan, split, with_ts=True)
    units = _enough(split_units(plan, spec, time_order=True), max_rows)
    reader = _reader(plan, store, spec, cache, non_finite, files, units)
    tally = (tally if tally is not None else Tally(split)).plan(units)
    # Each block's served rows are copied once, straight into their place: the footers'
    # rows bound what is served (pages never written are never committed).
    room = sum(u.rows for u in units) if max_rows is None else max_rows
    x = np.empty((room, len(plan.features)), np.float32)
    y = np.empty(room, np.float32)
    ts = np.empty(room, np.int64)
    rows = 0
    try:
        for unit, block, _ in reader.stream(units):
            if max_rows is not None and rows >= max_rows:
                break
            tally.add(unit, block, reader.files.uri(unit.part))
            take = block.rows if max_rows is None else min(block.rows, max_rows - rows)
            at = slice(rows, rows + take)
            stored_x, stored_y = block.x_stored.cpu().numpy(), block.y_stored.cpu().numpy()
            if block.index is None:
                x[at], y[at] = stored_x[:take], stored_y[:take]
            else:
                np.take(stored_x, block.index[:take], axis=0, out=x[at])
                np.take(stored_y, block.index[:take], out=y[at])
            served_ts = block.ts_served
            if served_ts is not None:
                ts[at] = served_ts[:take]
            reader.release(block)  # copied: its memory may serve the next
            rows += take
    finally:
        reader.close()
    if max_rows is None:
        tally.check()
    x, y, ts = x[:rows], y[:rows], ts[:rows]
    if rows > 1 and bool((ts[1:] < ts[:-1]).any()):  # several symbols interleave in time
        order = np.argsort(ts, kind="stable")
        return np.take(x, order, axis=0), y[order], ts[order]
    return x, y, ts
