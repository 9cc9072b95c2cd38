"""The streaming loader: the plan's row groups read in the background, shuffled, sharded
across ranks, cached, and served as float32 `(features, label)` batches on the device."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from trainer.data.blocks import Block, BlockSpec, Unit
from trainer.data.cache import BlockCache
from trainer.data.plan import DatasetPlan
from trainer.data.prefetch import BlockReader
from trainer.data.schedule import Segment, batch_segments, rank_units, row_order, split_units
from trainer.errors import DataError
from trainer.storage.base import ObjectStore

__all__ = [
    "BlockCache",
    "LoaderStats",
    "StreamingLoader",
    "compute_feature_stats",
    "read_split_arrays",
]

Split = Literal["train", "val"]
_Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""x, y, and ts when asked for."""
_STATE_KEYS = ("split", "seed", "rank", "world_size", "batch_size", "shuffle_buffer_row_groups")


@dataclass
class LoaderStats:
    """What one epoch (or the current one) read and delivered, on this rank."""

    rows: int = 0
    batches: int = 0
    dropped_non_finite: int = 0
    purged: int = 0
    """Rows read that fell in the purge gap before the validation start."""
    bytes_read: int = 0
    """Compressed bytes fetched from the store (cache hits read none)."""
    row_groups_read: int = 0
    cache_hits: int = 0
    first_batch_s: float | None = None
    rank: int = 0
    world_size: int = 1
    planned_rows: int = 0
    """Rows of the row groups assigned to this rank, from the footers, before filtering."""


class StreamingLoader:
    """Batches of one split, streamed from the object store by row group.

    Training order is deterministic in `(seed, epoch)`: the row groups of every partition
    are shuffled together, rank r takes every `world_size`-th of them, and rows are shuffled
    inside buffers of `shuffle_buffer_row_groups` row groups. Validation keeps time order.
    Rows are kept only inside the purged split (`ts < train_end_ms` for training,
    `ts >= val_start_ms` for validation); rows with a NaN or infinite value are dropped and
    counted, or fail the job with `non_finite="fail"`."""

    def __init__(
        self,
        plan: DatasetPlan,
        store: ObjectStore,
        *,
        split: Split,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        shuffle_buffer_row_groups: int = 4,
        files_in_flight: int = 3,
        non_finite: Literal["drop", "fail"] = "drop",
        max_rows: int | None = None,
        cache: BlockCache | None = None,
        drop_last: bool = False,
        with_ts: bool = False,
    ) -> None:
        problems = []
        if split not in ("train", "val"):
            problems.append(f"split must be 'train' or 'val', got {split!r}")
        if batch_size < 1 or shuffle_buffer_row_groups < 1 or files_in_flight < 1:
            problems.append("batch_size, shuffle_buffer_row_groups, files_in_flight must be >= 1")
        if not 0 <= rank < world_size:
            problems.append(f"rank {rank} is not in 0..{world_size - 1}")
        if non_finite not in ("drop", "fail"):
            problems.append(f"non_finite must be 'drop' or 'fail', got {non_finite!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.plan, self.split, self.batch_size, self.seed = plan, split, batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.shuffle_buffer_row_groups = shuffle_buffer_row_groups
        self.files_in_flight, self.non_finite, self.max_rows = files_in_flight, non_finite, max_rows
        self.cache, self.with_ts = cache, with_ts
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        b = plan.bounds
        self.spec = BlockSpec(
            features=plan.features,
            label=plan.label,
            timestamp=plan.timestamp,
            lo=b.val_start_ms if split == "val" else None,
            hi=b.train_end_ms if split == "train" else None,
            gap=(b.train_end_ms, b.val_start_ms),
            keep_ts=with_ts or split == "val",
        )
        self.units = split_units(plan, self.spec, time_order=split == "val")
        k = shuffle_buffer_row_groups if split == "train" else 1
        self.reader = BlockReader(
            plan,
            store,
            self.spec,
            device=self.device,
            files_in_flight=files_in_flight,
            ahead=files_in_flight + k,
            cache=cache,
        )
        self.stats = LoaderStats(rank=rank, world_size=world_size)
        self._pos = {"epoch": 0, "chunk": 0, "offset": 0, "rows": 0}
        self._resume: dict[str, int] | None = None

    # -- public API --------------------------------------------------------------------------
    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch: `(x [B, F], y [B])`, float32 on the device. A pending
        `load_state_dict` for this epoch resumes where it stopped; otherwise the epoch
        starts from its beginning."""
        for x, y, _ in self._start(epoch, with_ts=False):
            yield x, y

    def epoch_with_ts(
        self, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """As `epoch`, plus each row's timestamp `ts [B]` (int64, on the CPU). Validation
        keeps timestamps always; a training loader needs `with_ts=True`."""
        if not self.spec.keep_ts:
            raise ValueError("this loader drops timestamps: create it with with_ts=True")
        for x, y, ts in self._start(epoch, with_ts=True):
            if ts is None:  # pragma: no cover - keep_ts guarantees them
                raise RuntimeError("timestamps missing")
            yield x, y, ts

    def _start(self, epoch: int, with_ts: bool) -> Iterator[_Batch]:
        start = (0, 0, 0)
        if self._resume is not None and self._resume["epoch"] == epoch:
            start = (self._resume["chunk"], self._resume["offset"], self._resume["rows"])
        self._resume = None
        return self._run(epoch, *start, with_ts=with_ts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The current epoch; the epoch counter advances when it has been read through."""
        return self.epoch(self._pos["epoch"])

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out: epoch, row-group buffer, row offset
        inside its shuffled order, rows delivered. The shuffle itself is a pure function of
        `(seed, epoch, rank, buffer)`, so nothing else needs saving."""
        ident = {k: getattr(self, k) for k in _STATE_KEYS}
        return {"version": 1, **ident, **self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`: the next `epoch(state['epoch'])` (or iteration) yields
        exactly the batches an uninterrupted loader would have yielded next."""
        wrong = [
            f"{k}: saved {state.get(k)!r}, this loader has {getattr(self, k)!r}"
            for k in _STATE_KEYS
            if state.get(k) != getattr(self, k)
        ]
        if state.get("version") != 1 or wrong:
            raise ValueError("loader state does not match this loader: " + "; ".join(wrong))
        self._pos = {k: int(state[k]) for k in ("epoch", "chunk", "offset", "rows")}
        self._resume = dict(self._pos)

    def shard_rows(self, epoch: int) -> list[int]:
        """Footer rows (before filtering) of the row groups each rank reads in `epoch`."""
        return [sum(u.rows for u in self._rank_units(epoch, r)) for r in range(self.world_size)]

    def blocks(self) -> Iterator[Block]:
        """Every block of this rank's share of the split, in file (validation: time) order,
        through the cache and on the device; for whole-split passes like feature statistics."""
        self.stats = LoaderStats(rank=self.rank, world_size=self.world_size)
        units = self.units[self.rank :: self.world_size]
        self.stats.planned_rows = sum(u.rows for u in units)
        for unit, block, hit in self.reader.stream(units):
            yield self._count(unit, block, hit)

    def close(self) -> None:
        self.reader.close()

    # -- the epoch ---------------------------------------------------------------------------
    def _rank_units(self, epoch: int, rank: int) -> list[Unit]:
        return rank_units(
            self.units, self.seed, epoch, rank, self.world_size, self.split == "train"
        )

    def _run(
        self, epoch: int, chunk0: int, offset0: int, done: int, with_ts: bool
    ) -> Iterator[_Batch]:
        t0 = time.perf_counter()
        stats = self.stats = LoaderStats(rank=self.rank, world_size=self.world_size)
        units = self._rank_units(epoch, self.rank)
        stats.planned_rows = sum(u.rows for u in units)
        k = self.shuffle_buffer_row_groups if self.split == "train" else 1
        chunks = [units[i : i + k] for i in range(0, len(units), k)]
        self._pos = {"epoch": epoch, "chunk": chunk0, "offset": offset0, "rows": done}
        limit = self.max_rows if self.max_rows is not None else -1
        stream = self.reader.stream([u for ch in chunks[chunk0:] for u in ch])
        carry: list[_Batch] = []  # a batch begun in the previous buffer
        try:
            for c in range(chunk0, len(chunks)):
                if done == limit:
                    break
                blocks = [self._count(*next(stream)) for _ in chunks[c]]
                sizes = [b.rows for b in blocks]
                order = None
                if self.split == "train":
                    order = row_order(sum(sizes), self.seed, epoch, self.rank, c)
                first = self.batch_size - _rows(carry)
                start = offset0 if c == chunk0 else 0
                local, segments = batch_segments(sizes, order, start, first, self.batch_size)
                local_t = self._indices(local) if order is not None else None
                for seg in segments:
                    carry.append(self._gather(blocks, seg, local, local_t, with_ts))
                    if _rows(carry) < self.batch_size:
                        break  # the buffer's short tail opens the next buffer's first batch
                    batch, carry = _join(carry), []
                    at_end = seg.end == len(local)
                    pos = (c + 1, 0) if at_end else (c, seg.end)
                    for out in self._deliver(batch, epoch, pos, done, limit, t0):
                        done += len(out[1])
                        yield out
                    if done == limit:
                        break
                for block in blocks:  # every batch holds copies: the blocks are spent
                    self.reader.release(block)
            if carry and done != limit:
                for out in self._deliver(_join(carry), epoch, (len(chunks), 0), done, limit, t0):
                    done += len(out[1])
                    yield out
        finally:
            stream.close()
        self._pos = {"epoch": epoch + 1, "chunk": 0, "offset": 0, "rows": 0}

    def _deliver(
        self,
        batch: _Batch,
        epoch: int,
        pos: tuple[int, int],
        done: int,
        limit: int,
        t0: float,
    ) -> Iterator[_Batch]:
        """Hand out one batch (cut to `max_rows`), recording the position after it."""
        if limit >= 0 and done + len(batch[1]) > limit:
            cut = limit - done
            batch = (batch[0][:cut], batch[1][:cut], None if batch[2] is None else batch[2][:cut])
        rows = len(batch[1])
        if rows == 0 or (self.drop_last and rows < self.batch_size):
            return
        self._pos = {"epoch": epoch, "chunk": pos[0], "offset": pos[1], "rows": done + rows}
        self.stats.rows += rows
        self.stats.batches += 1
        if self.stats.first_batch_s is None:
            self.stats.first_batch_s = time.perf_counter() - t0
        yield batch

    def _indices(self, local: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(local)
        if self.device.type == "cuda":
            # One pinned, asynchronous copy per buffer instead of one per batch.
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _gather(
        self,
        blocks: Sequence[Block],
        seg: Segment,
        local: np.ndarray,
        local_t: torch.Tensor | None,
        with_ts: bool,
    ) -> _Batch:
        """One batch's rows: each block's rows are one sorted run of `local`, gathered
        straight into its slice of the output (the row order inside a batch does not matter
        to a mean loss, only which rows share it)."""
        n, nf = seg.end - seg.start, len(self.plan.features)
        x = torch.empty((n, nf), dtype=torch.float32, device=self.device)
        y = torch.empty(n, dtype=torch.float32, device=self.device)
        ts: list[np.ndarray] | None = [] if with_ts else None
        for blk, a, b in zip(blocks, seg.cuts[:-1], seg.cuts[1:], strict=True):
            if a == b:
                continue
            out = slice(a - seg.start, b - seg.start)
            if seg.ordered or local_t is None:
                lo = int(local[a])
                x[out].copy_(blk.x[lo : lo + b - a])
                y[out].copy_(blk.y[lo : lo + b - a])
            else:
                torch.index_select(blk.x, 0, local_t[a:b], out=x[out])
                torch.index_select(blk.y, 0, local_t[a:b], out=y[out])
            if ts is not None and blk.ts is not None:
                ts.append(blk.ts.numpy()[local[a:b]])
        if ts is None:
            return x, y, None
        return x, y, torch.from_numpy(np.concatenate(ts) if ts else np.empty(0, np.int64))

    def _count(self, unit: Unit, block: Block, hit: bool) -> Block:
        stats = self.stats
        if hit:
            stats.cache_hits += 1
        else:
            stats.row_groups_read += 1
            stats.bytes_read += block.bytes_read
        stats.dropped_non_finite += block.dropped
        stats.purged += block.purged
        if block.dropped and self.non_finite == "fail":
            raise DataError(
                "non-finite values in the data (data.non_finite is 'fail'; 'drop' skips them)",
                [
                    f"{self.reader.files.uri(unit.part)}: row group {unit.group}: "
                    f"{block.dropped} row(s) with a NaN or infinite label or feature"
                ],
            )
        return block


def _rows(pieces: list[_Batch]) -> int:
    return sum(len(p[1]) for p in pieces)


def _join(pieces: list[_Batch]) -> _Batch:
    if len(pieces) == 1:
        return pieces[0]
    ts = [p[2] for p in pieces if p[2] is not None]
    return (
        torch.cat([p[0] for p in pieces]),
        torch.cat([p[1] for p in pieces]),
        torch.cat(ts) if ts else None,
    )


def compute_feature_stats(
    plan: DatasetPlan,
    store: ObjectStore,
    *,
    cache: BlockCache | None = None,
    non_finite: Literal["drop", "fail"] = "drop",
    max_rows: int | None = None,
    min_std: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-feature mean and standard deviation of the training rows (after the purge and the
    non-finite filter), accumulated in float64 by merging per-block moments (Chan et al.), so
    large offsets do not cancel. Reading goes through `cache`, which it leaves warm for
    training. Returns `(mean, std floored at min_std, rows)`."""
    device = cache.device if cache is not None else torch.device("cpu")
    loader = StreamingLoader(
        plan, store, split="train", batch_size=1, device=device, cache=cache, non_finite=non_finite
    )
    nf = len(plan.features)
    rows, mean, m2 = 0, torch.zeros(nf, dtype=torch.float64), torch.zeros(nf, dtype=torch.float64)
    try:
        for block in loader.blocks():
            take = block.rows if max_rows is None else min(block.rows, max_rows - rows)
            if take <= 0:
                break
            x = block.x[:take].double()
            b_mean = x.mean(0)
            b_m2 = ((x - b_mean) ** 2).sum(0).cpu()
            b_mean = b_mean.cpu()
            total = rows + take
            delta = b_mean - mean
            mean += delta * (take / total)
            m2 += b_m2 + delta**2 * (rows * take / total)
            rows = total
    finally:
        loader.close()
    std = torch.sqrt(m2 / max(rows, 1)).clamp_min(min_std)
    return mean.numpy(), std.numpy(), rows


def read_split_arrays(
    plan: DatasetPlan,
    store: ObjectStore,
    split: Split = "val",
    *,
    cache: BlockCache | None = None,
    non_finite: Literal["drop", "fail"] = "drop",
    max_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole (small) split as numpy `(X [N, F] float32, y [N] float32, ts [N] int64)`,
    sorted by time (stable), for evaluation and for exporting predictions."""
    loader = StreamingLoader(
        plan, store, split=split, batch_size=1, cache=cache, non_finite=non_finite, with_ts=True
    )
    xs, ys, tss, rows = [], [], [], 0
    try:
        for block in loader.blocks():
            take = block.rows if max_rows is None else min(block.rows, max_rows - rows)
            if take <= 0:
                break
            xs.append(block.x[:take].cpu().numpy())
            ys.append(block.y[:take].cpu().numpy())
            tss.append(block.ts.numpy()[:take] if block.ts is not None else np.empty(0, np.int64))
            rows += take
    finally:
        loader.close()
    if not xs:
        nf = len(plan.features)
        return np.empty((0, nf), np.float32), np.empty(0, np.float32), np.empty(0, np.int64)
    ts = np.concatenate(tss)
    order = np.argsort(ts, kind="stable")
    return np.concatenate(xs)[order], np.concatenate(ys)[order], ts[order]
