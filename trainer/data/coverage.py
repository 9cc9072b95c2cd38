"""What the pre-flight reports about the dataset as a whole: missing partitions as date
ranges, and a split that the footers prove has no usable row (a purge longer than the span,
every row group of a split without a finite label or feature)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from trainer.data.split import SplitBounds
from trainer.spec.dates import parse_yyyymmdd
from trainer.spec.sections import DataSpec
from trainer.store.layout import Partition

if TYPE_CHECKING:
    from trainer.data.plan import PartitionInfo


MAX_RANGES = 20
"""Date ranges of missing partitions listed per symbol; the rest are counted."""


def missing_ranges(missing: list[Partition], where: Callable[[Partition], str]) -> list[str]:
    """Missing partitions as one line per symbol and run of consecutive days: a hundred
    years of absent days is a few lines, not 36,526. `where(part)` names its folder."""
    lines = []
    by_symbol: dict[str, list[Partition]] = {}
    for part in missing:
        by_symbol.setdefault(part.symbol, []).append(part)
    for symbol, parts in by_symbol.items():
        runs: list[list[Partition]] = []
        for part in sorted(parts, key=lambda p: p.date):
            day = parse_yyyymmdd(part.date)
            if runs and parse_yyyymmdd(runs[-1][-1].date) + dt.timedelta(days=1) == day:
                runs[-1].append(part)
            else:
                runs.append([part])
        for run in runs[:MAX_RANGES]:
            first, last = run[0], run[-1]
            if len(run) == 1:
                lines.append(
                    f"date {first.date}, symbol {symbol}: partition missing ({where(first)} "
                    "has no data.parquet nor meta.json)"
                )
            else:
                lines.append(
                    f"dates {first.date}..{last.date}, symbol {symbol}: {len(run)} partitions "
                    f"missing (from {where(first)} to {where(last)}: no data.parquet nor "
                    "meta.json)"
                )
        if len(runs) > MAX_RANGES:
            rest = runs[MAX_RANGES:]
            lines.append(
                f"symbol {symbol}: {sum(map(len, rest))} more partitions missing in "
                f"{len(rest)} more date ranges, from {rest[0][0].date} to {rest[-1][-1].date}"
            )
    return lines


def rows_to_use(
    infos: Sequence[PartitionInfo],
    data: DataSpec,
    features: tuple[str, ...],
    bounds: SplitBounds,
    horizon: int,
    ts_min: int,
    ts_max: int,
) -> list[str]:
    """A split the footers prove empty is refused here, not after the data is read: no row
    before the purge, no row from the validation start, or every row group of a split with
    a label or feature column holding no finite value."""
    if not features:
        return ["no numeric feature column: `data.features: auto` found none to train on"]
    purge = data.split.purge_sec
    purge_of = (
        f"data.split.purge_sec={purge}"
        if purge is not None
        else f"the purge of meta.json's label_horizon_sec={horizon}"
    )
    if bounds.train_end_ms <= ts_min:
        return [
            f"{purge_of} ends training at {bounds.train_end_ms}, before the first row "
            f"({ts_min}): no training row is left; shorten the purge or select more days"
        ]
    if bounds.val_start_ms > ts_max:
        return [f"data.split leaves no validation row: it starts at {bounds.val_start_ms}, "
                f"after the last row ({ts_max})"]  # fmt: skip
    needed = (*features, data.label_column)
    problems = []
    for split, inside in (
        ("training", lambda g: g.ts_min is None or g.ts_min < bounds.train_end_ms),
        ("validation", lambda g: g.ts_max is None or g.ts_max >= bounds.val_start_ms),
    ):
        groups = [g for p in infos for g in p.row_groups if g.rows and inside(g)]
        if groups and all(set(needed) & g.no_finite for g in groups):
            empty = sorted({c for g in groups for c in set(needed) & g.no_finite})
            problems.append(
                f"every {split} row group has no finite value in column(s) "
                f"{', '.join(map(repr, empty))} (all NaN, null or infinite): no {split} row "
                "is usable"
            )
        elif not groups:
            none = [p for p in infos if p.rows == 0] or infos
            named = ", ".join(f"date {p.part.date}, symbol {p.part.symbol}" for p in none[:10])
            more = f" and {len(none) - 10} more" if len(none) > 10 else ""
            problems.append(
                f"no {split} row inside the split: {len(none)} partition(s) hold none "
                f"({named}{more})"
            )
    return problems
