"""Which rows go where: a split's row groups, the day-stratified sample the statistics read,
their per-epoch shuffle and rank shards, and each shuffle buffer's row order cut into
batches. Pure functions of plain values."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.data.blocks import BlockSpec, Unit
from trainer.data.plan import DatasetPlan


def split_units(plan: DatasetPlan, spec: BlockSpec, time_order: bool) -> list[Unit]:
    """Every row group that may hold rows of the split; those whose timestamp statistics lie
    wholly outside its window are left out unread. File order, or time order (by the
    groups' first timestamp) with `time_order`."""
    units = [
        unit
        for p in range(len(plan.partitions))
        for unit in partition_units(plan, p)
        if not spec.outside(unit)
    ]
    if time_order:

        def first_ts(u: Unit) -> tuple[int, int, int]:
            meta_min = plan.partitions[u.part].meta.ts_min
            return (u.ts_min if u.ts_min is not None else meta_min, u.part, u.group)

        units.sort(key=first_ts)
    return units


def partition_units(plan: DatasetPlan, part: int) -> list[Unit]:
    """Every non-empty row group of one partition, in file order, each with its offset."""
    units, offset = [], 0
    for rg in plan.partitions[part].row_groups:
        if rg.rows:
            units.append(Unit(part, rg.index, rg.rows, rg.ts_min, rg.ts_max, offset))
        offset += rg.rows
    return units


def sample_units(
    plan: DatasetPlan, units: Sequence[Unit], rows: int, first: Sequence[Unit] = ()
) -> list[Unit]:
    """About `rows` rows' worth of `units`, stratified across days: every unit when they
    hold no more; otherwise the quota of units is spread evenly over the days (a day gets
    one more or one fewer than another, never none while a day gets two), and inside a day
    spread evenly over the time of day and across symbols, with an offset that moves from
    day to day so that the sample does not always read the same hour. A pure function of
    the plan and `first`: every rank draws the same sample for the same `first`.

    Each pick stands for a stratum: its stretch of a day's row groups, or, with fewer picks
    than days, its run of days. `first`, the row groups training reads first (in that
    order): a stratum holding one of them picks the earliest instead, so that the sample
    also serves the first shuffle buffer. The training order is a uniform shuffle, so that
    pick is a uniformly drawn row group of its stratum: the stratification stands."""
    if sum(u.rows for u in units) <= rows:
        return list(units)
    by_day: dict[str, list[Unit]] = {}
    for u in units:
        by_day.setdefault(plan.partitions[u.part].part.date, []).append(u)
    days = sorted(by_day)
    mean_rows = sum(u.rows for u in units) / len(units)
    quota = min(max(math.ceil(rows / mean_rows), 1), len(units))
    rank = {(u.part, u.group): i for i, u in enumerate(first)}

    def pick(stratum: Sequence[Unit], default: Unit) -> Unit:
        preferred = [u for u in stratum if (u.part, u.group) in rank]
        return min(preferred, key=lambda u: rank[(u.part, u.group)]) if preferred else default

    picked: list[Unit] = []
    run: list[Unit] = []  # with fewer picks than days: the days since the last pick
    for i, day in enumerate(days):
        # time of day first, symbols interleaved: group index, then partition
        pool = sorted(by_day[day], key=lambda u: (u.group, u.part))
        take = min(quota * (i + 1) // len(days) - quota * i // len(days), len(pool))
        offset = (i * 0.6180339887) % 1.0
        if quota < len(days):
            run += pool
            if take:
                picked.append(pick(run, pool[int(offset * len(pool))]))
                run = []
            continue
        for j in range(take):
            stretch = pool[j * len(pool) // take : (j + 1) * len(pool) // take]
            picked.append(pick(stretch, pool[int((j + offset) * len(pool) / take)]))
    return picked


def rank_units(
    units: Sequence[Unit],
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    shuffle: bool,
    run: int = 1,
) -> list[Unit]:
    """This rank's row groups for one epoch. Shuffled: the row groups are dealt to the ranks
    once for the job, by `seed` (every `world_size`-th of one permutation, the same on every
    rank), and each rank visits its own in a new order every epoch, by `(seed, epoch)`. So
    each row group, hence each row, goes to exactly one rank, and a rank's cache holds
    blocks that the rank itself serves again in every later epoch. `run` > 1 deals up to
    that many consecutive row groups of one partition together (`units` in file order), so
    that the windows across their boundaries stay on one rank. In order: every
    `world_size`-th row group from position `rank`."""
    ordered = list(units)
    if not shuffle:
        return ordered[rank::world_size]
    runs: list[list[Unit]] = []
    for u in ordered:
        last = runs[-1][-1] if runs else None
        joins = last is not None and last.part == u.part and last.offset + last.rows == u.offset
        if joins and len(runs[-1]) < run:
            runs[-1].append(u)
        else:
            runs.append([u])
    deal = np.random.default_rng([seed]).permutation(len(runs))
    mine = [u for i in deal[rank::world_size] for u in runs[i]]
    visit = np.random.default_rng([seed, epoch]).permutation(len(mine))
    return [mine[i] for i in visit]


def deal_run(units: int, world_size: int, window: int) -> int:
    """How many consecutive row groups are dealt to a rank together: one for single rows
    or a single rank; with windows, as many as leaves every rank about 16 runs, so that
    nearly every seam between row groups stays on one rank and the shards stay even."""
    if window == 1 or world_size == 1:
        return 1
    return max(1, units // (16 * world_size))


@dataclass(frozen=True)
class Seam:
    """The windows that end in `owner`'s first `L - 1` rows: they need the rows of
    `earlier`, the row groups before it in its partition (nearest first)."""

    owner: Unit
    earlier: tuple[Unit, ...]


def seams(plan: DatasetPlan, units: Sequence[Unit], window: int, buffer: int) -> list[list[Seam]]:
    """For each shuffle buffer of `buffer` consecutive `units` (this rank's, in visiting
    order), the seams it serves. A seam goes to the buffer of whichever of its row groups
    this rank visits last, so every row group it needs has been read by then (no row group
    is read twice) and it is a pure function of the order (resuming is exact). Row groups it
    needs that this rank does not visit (another rank's, or validation's history before
    the split) are read for their edges alone."""
    out: list[list[Seam]] = [[] for _ in range(math.ceil(len(units) / buffer))]
    if window == 1:
        return out
    at = {(u.part, u.group): i for i, u in enumerate(units)}
    groups = {p: partition_units(plan, p) for p in {u.part for u in units}}
    for i, u in enumerate(units):
        if u.offset == 0:
            continue  # a partition's first row group: nothing before it
        before = [g for g in groups[u.part] if g.offset < u.offset]
        earlier, need = [], window - 1
        for g in reversed(before):
            if need <= 0:
                break
            earlier.append(g)
            need -= g.rows
        last = max([i] + [at[(g.part, g.group)] for g in earlier if (g.part, g.group) in at])
        out[last // buffer].append(Seam(u, tuple(earlier)))
    return out


def row_order(rows: int, seed: int, epoch: int, rank: int, buffer: int) -> np.ndarray:
    """The shuffled row order of one buffer, a pure function of its coordinates, which is
    what makes resuming in the middle of an epoch exact."""
    # numpy's, not torch's randperm: torch fills its identity permutation on OpenMP
    # threads, which then spin for milliseconds against the reading threads (a tenth of
    # the loader's CPU above the decode). int32 halves the later per-batch sorts.
    gen = np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, buffer]))
    return gen.permutation(rows).astype(np.int32)


@dataclass(frozen=True)
class Segment:
    """The positions `[start, end)` of a buffer's row order that make one batch (or the part
    of one that this buffer holds). Their rows sit in `local[start:end]`, grouped by block:
    block k's are `local[cuts[k]:cuts[k + 1]]`, as row numbers inside that block."""

    start: int
    end: int
    cuts: tuple[int, ...]


def batch_segments(
    served: Sequence[np.ndarray], order: np.ndarray | None, start: int, first: int, batch: int
) -> tuple[np.ndarray, list[Segment]]:
    """Cut a buffer of blocks into batches. `served[k]` lists the rows block k serves; the
    buffer's positions run over all of them, block after block, taken in `order` (or as
    they come when None) from position `start`: the first segment `first` long (the rest
    of a batch begun in the previous buffer), then `batch` each, the last maybe short.
    Returns every position's row inside its block, and the segments."""
    sizes = [len(s) for s in served]
    total = sum(sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    # position in the buffer -> row inside its block, by lookup rather than search
    local_of = (
        np.concatenate(served).astype(np.int32, copy=False) if served else np.zeros(0, np.int32)
    )
    local = local_of if order is None else np.empty(total, np.int32)
    edges = [start]
    step = first
    while edges[-1] < total:
        edges.append(min(edges[-1] + step, total))
        step = batch
    segments = []
    for a, b in itertools.pairwise(edges):
        if order is None:
            cuts = np.clip(offsets, a, b)
        else:
            # sorted, so each block's rows form one run gathered in one call
            idx = np.sort(order[a:b])
            np.take(local_of, idx, out=local[a:b], mode="clip")
            cuts = a + np.searchsorted(idx, offsets)
        segments.append(Segment(a, b, tuple(int(c) for c in cuts)))
    return local, segments
