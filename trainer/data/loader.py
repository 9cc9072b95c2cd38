"""The streaming loader: the plan's row groups read in the background, shuffled, sharded
across ranks, cached, and served as float32 `(features, label)` batches on the device."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from trainer.data.batches import Batch, BufferSource, Filling, gather, output
from trainer.data.blocks import Block, Unit, resolve_device, seam_block
from trainer.data.cache import BlockCache
from trainer.data.order import (
    Seam,
    batch_segments,
    deal_run,
    rank_units,
    row_order,
    seams,
    split_units,
)
from trainer.data.passes import compute_feature_stats, read_split_arrays, split_spec
from trainer.data.plan import DatasetPlan
from trainer.data.prefetch import BlockReader, PartitionFiles, reading_threads
from trainer.data.tally import Tally
from trainer.data.windows import Edges, seam_rows
from trainer.errors import DataError
from trainer.store.base import ObjectStore

__all__ = [
    "BlockCache",
    "LoaderStats",
    "StreamingLoader",
    "compute_feature_stats",
    "read_split_arrays",
]

Split = Literal["train", "val"]
STATE_VERSION = 3
"""Of the position `state_dict` saves; 2 since row groups are dealt to ranks once per job, 3
since each buffer's row order comes from numpy's generator."""
_STATE_KEYS = (
    "split",
    "seed",
    "rank",
    "world_size",
    "batch_size",
    "shuffle_buffer_row_groups",
    "window",
)
_STATE_DEFAULTS = {"window": 1}
"""What a state saved before a key existed meant by it."""


@dataclass
class LoaderStats:
    """What one epoch (or the current one) read and delivered, on this rank."""

    rows: int = 0
    batches: int = 0
    dropped_non_finite: int = 0
    """Rows (windows, with a window above 1) dropped for a NaN or infinite value."""
    short_history: int = 0
    """Rows with fewer than `window - 1` earlier rows in their partition: no sample."""
    purged: int = 0
    """Rows read that fell in the purge gap before the validation start."""
    bytes_read: int = 0
    """Compressed bytes fetched from the store (cache hits read none)."""
    row_groups_read: int = 0
    cache_hits: int = 0
    """Row groups served from the cache..."""
    rows_from_cache: int = 0
    """... and the rows they served."""
    first_batch_s: float | None = None
    rank: int = 0
    world_size: int = 1
    planned_rows: int = 0
    """Rows of the row groups assigned to this rank, from the footers, before filtering."""


class StreamingLoader:
    """Batches of one split, streamed from the object store by row group.

    Training order is deterministic in `(seed, epoch)`: the row groups of every partition
    are dealt to the ranks once by `seed`, each rank visits its own in a new order every
    epoch, and rows are shuffled inside buffers of `shuffle_buffer_row_groups` row groups.
    Validation keeps time order.
    With `window` above 1 a sample is the `window` rows of one partition ending at the
    labelled row, batches are `(x [B, window, F], y [B])`, gathered from the blocks on the
    device; the windows across a row-group boundary are served from the edges the two row
    groups keep (`windows.Edges`), so no row group is read twice and nothing holds a window.
    Rows are kept only inside the purged split (`ts < train_end_ms` for training,
    `ts >= val_start_ms` for validation); rows with a NaN or infinite value are dropped and
    counted, or fail the job with `non_finite="fail"`.

    Row groups are read straight from the store on `files_in_flight` threads (by default
    3 for a remote store, no more than the usable cores for a local one), a bounded number
    ahead, so the first batch comes after the first buffer, not after a download.
    Each becomes one float32 block; on a GPU the block is copied whole (pinned memory,
    asynchronous) and batches are gathered on the device. With a `cache`, later epochs
    are served from decoded blocks; `max_rows` stops after that many rows, reading no
    shuffle buffer past the one whose footer rows reach it (dry runs).
    `files`: the job's shared table of open files (the loader opens its own without)."""

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
        files_in_flight: int | None = None,
        non_finite: Literal["drop", "fail"] = "drop",
        max_rows: int | None = None,
        cache: BlockCache | None = None,
        drop_last: bool = False,
        with_ts: bool = False,
        files: PartitionFiles | None = None,
        window: int = 1,
    ) -> None:
        problems = []
        if window < 1:
            problems.append(f"window must be at least 1, got {window}")
        if split not in ("train", "val"):
            problems.append(f"split must be 'train' or 'val', got {split!r}")
        if files_in_flight is None:
            files_in_flight = reading_threads(store)
        if batch_size < 1 or shuffle_buffer_row_groups < 1 or files_in_flight < 1:
            problems.append("batch_size, shuffle_buffer_row_groups, files_in_flight must be >= 1")
        if not 0 <= rank < world_size:
            problems.append(f"rank {rank} is not in 0..{world_size - 1}")
        if seed < 0 or (max_rows is not None and max_rows < 0):
            problems.append("seed and max_rows must not be negative")
        if non_finite not in ("drop", "fail"):
            problems.append(f"non_finite must be 'drop' or 'fail', got {non_finite!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.plan, self.split, self.batch_size, self.seed = plan, split, batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.shuffle_buffer_row_groups = shuffle_buffer_row_groups
        self.files_in_flight, self.non_finite, self.max_rows = files_in_flight, non_finite, max_rows
        self.cache, self.with_ts, self.window = cache, with_ts, window
        self.device = resolve_device(device)
        self.spec = split_spec(plan, split, with_ts, window)
        self.units = split_units(plan, self.spec, time_order=split == "val")
        self.run = deal_run(len(self.units), world_size, window)
        self._edges: dict[tuple[int, int], Edges] = {}
        """Every row group's edges seen so far (kept across epochs: they are small)."""
        k = self.buffer_groups = shuffle_buffer_row_groups if split == "train" else 1
        """Row groups per shuffle buffer (validation keeps time order: one at a time)."""
        self.reader = BlockReader(
            plan,
            store,
            self.spec,
            device=self.device,
            files_in_flight=files_in_flight,
            # Enough to assemble the next shuffle buffer while this one is served, no more:
            # every block ahead costs a row group of memory.
            ahead=max(k, files_in_flight) + 1,
            cache=cache,
            non_finite=non_finite,
            files=files,
        )
        self.stats = LoaderStats(rank=rank, world_size=world_size)
        self.tally = Tally.of(split, [])
        """The rows of the epoch being read (from where it resumed)."""
        self.first_epoch: Tally | None = None
        """The rows of the first epoch read here from its beginning to its end."""
        self.epochs_read = 0
        """Epochs whose every row group was read (their last batches may not all be used)."""
        self._pos = {"epoch": 0, "chunk": 0, "offset": 0, "rows": 0}
        self._resume: dict[str, int] | None = None

    # -- public API --------------------------------------------------------------------------
    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch: `(x [B, F], y [B])` (`x [B, window, F]` with a window
        above 1), float32 on the device. A pending
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

    def _start(self, epoch: int, with_ts: bool) -> Iterator[Batch]:
        start = (0, 0, 0)
        if self._resume is not None and self._resume["epoch"] == epoch:
            start = (self._resume["chunk"], self._resume["offset"], self._resume["rows"])
        self._resume = None
        return self._run(epoch, *start, with_ts=with_ts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The current epoch; the epoch counter advances when it has been read through."""
        return self.epoch(self._pos["epoch"])

    def first_buffer(self) -> list[Unit]:
        """The row groups of the first shuffle buffer of the epoch the next `epoch()` starts
        with (its beginning, or the position `load_state_dict` restored), in reading order."""
        epoch, chunk = self._pos["epoch"], 0
        if self._resume is not None:
            epoch, chunk = self._resume["epoch"], self._resume["chunk"]
        k = self.buffer_groups
        return self._rank_units(epoch, self.rank)[chunk * k : (chunk + 1) * k]

    def read_ahead(self, skip: Collection[Unit] = ()) -> list[Future[Block]]:
        """Begin reading `first_buffer()`, so that its row groups arrive while the job still
        reads other things (the feature statistics, the validation rows). A head start
        only: an epoch that starts elsewhere drops them. `skip`: row groups another pass
        reads into the cache first (the epoch takes them from there). Returns the reads,
        for a caller that waits."""
        cached = {(u.part, u.group) for u in skip}
        first = [u for u in self.first_buffer() if (u.part, u.group) not in cached]
        return self.reader.read_early(first)

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out: epoch, row-group buffer, row offset
        inside its shuffled order, rows delivered. The shuffle itself is a pure function of
        `(seed, epoch, rank, buffer)`, so nothing else needs saving."""
        ident = {k: getattr(self, k) for k in _STATE_KEYS}
        return {"version": STATE_VERSION, **ident, **self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`: the next `epoch(state['epoch'])` (or iteration) yields
        exactly the batches an uninterrupted loader would have yielded next."""
        wrong = [
            f"{k}: saved {state.get(k, _STATE_DEFAULTS.get(k))!r}, this loader has "
            f"{getattr(self, k)!r}"
            for k in _STATE_KEYS
            if state.get(k, _STATE_DEFAULTS.get(k)) != getattr(self, k)
        ]
        if state.get("version") != STATE_VERSION or wrong:
            raise ValueError("loader state does not match this loader: " + "; ".join(wrong))
        self._pos = {k: int(state[k]) for k in ("epoch", "chunk", "offset", "rows")}
        self._resume = dict(self._pos)

    def shard_rows(self, epoch: int) -> list[int]:
        """Footer rows (before filtering) of the row groups each rank reads in `epoch`."""
        return [sum(u.rows for u in self._rank_units(epoch, r)) for r in range(self.world_size)]

    def close(self, wait: bool = False) -> None:
        """Stop the reading threads (`wait`: until the reads in flight are done) and close
        the open files."""
        self.reader.close(wait)

    # -- the epoch ---------------------------------------------------------------------------
    def _rank_units(self, epoch: int, rank: int) -> list[Unit]:
        return rank_units(
            self.units, self.seed, epoch, rank, self.world_size, self.split == "train", self.run
        )

    def _run(
        self, epoch: int, chunk0: int, offset0: int, done: int, with_ts: bool
    ) -> Iterator[Batch]:
        t0 = time.perf_counter()
        stats = self.stats = LoaderStats(rank=self.rank, world_size=self.world_size)
        units = self._rank_units(epoch, self.rank)
        stats.planned_rows = sum(u.rows for u in units)
        k = self.buffer_groups
        chunks = [units[i : i + k] for i in range(0, len(units), k)]
        seams_at = seams(self.plan, units, self.window, k)
        self._pos = {"epoch": epoch, "chunk": chunk0, "offset": offset0, "rows": done}
        limit = self.max_rows if self.max_rows is not None else -1
        last = len(chunks)
        if limit >= 0:  # read no buffer past the one whose footer rows reach `max_rows`
            need = np.cumsum([sum(u.rows for u in ch) for ch in chunks[chunk0:]])
            last = min(last, chunk0 + int(np.searchsorted(need, limit - done)) + 1)
        planned = [u for ch in chunks[chunk0:last] for u in ch]
        self.tally = Tally.of("training" if self.split == "train" else "validation", planned)
        self.tally.resumed = chunk0 > 0 or offset0 > 0
        stream = self.reader.stream(planned)
        filling: Filling | None = None  # a batch begun in the previous buffer
        nf = len(self.plan.features)
        try:
            for c in range(chunk0, last):
                if done == limit:
                    break
                blocks = [self._count(*next(stream)) for _ in chunks[c]]
                pieces = blocks + [self._seam(seam) for seam in seams_at[c]]
                if c == len(chunks) - 1 and limit < 0:
                    self._read_through()
                served = [b.served for b in pieces]
                order = None
                if self.split == "train":
                    total = sum(len(s) for s in served)
                    order = row_order(total, self.seed, epoch, self.rank, c)
                first = self.batch_size - (filling.rows if filling is not None else 0)
                start = offset0 if c == chunk0 else 0
                local, segments = batch_segments(served, order, start, first, self.batch_size)
                source = BufferSource.of(pieces, local, self.device, self.window)
                for seg in segments:
                    if filling is None:
                        filling = output(source, self.batch_size, nf)
                    gather(source, seg, filling, with_ts)
                    if filling.rows < self.batch_size:
                        break  # the buffer's short tail opens the next buffer's first batch
                    batch, filling = filling.batch(), None
                    at_end = seg.end == len(local)
                    pos = (c + 1, 0) if at_end else (c, seg.end)
                    for out in self._deliver(batch, epoch, pos, done, limit, t0):
                        done += len(out[1])
                        yield out
                    if done == limit:
                        break
                for block in blocks:  # every batch holds copies: the blocks are spent
                    self.reader.release(block)
            if filling is not None and filling.rows and done != limit:
                last_batch = filling.batch()
                for out in self._deliver(last_batch, epoch, (len(chunks), 0), done, limit, t0):
                    done += len(out[1])
                    yield out
        finally:
            stream.close()
        self._pos = {"epoch": epoch + 1, "chunk": 0, "offset": 0, "rows": 0}

    def _deliver(
        self,
        batch: Batch,
        epoch: int,
        pos: tuple[int, int],
        done: int,
        limit: int,
        t0: float,
    ) -> Iterator[Batch]:
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

    def _read_through(self) -> None:
        """The epoch's last buffer is read: every planned row group must have been, whole,
        before its last batches go out."""
        self.tally.check()
        self.epochs_read += 1
        if self.first_epoch is None and not self.tally.resumed:
            self.first_epoch = self.tally

    def _count(self, unit: Unit, block: Block, hit: bool) -> Block:
        self.tally.add(unit, block, self.reader.files.uri(unit.part))
        stats = self.stats
        if hit:
            stats.cache_hits += 1
            stats.rows_from_cache += block.rows
        else:
            stats.row_groups_read += 1
            stats.bytes_read += block.bytes_read
        stats.dropped_non_finite += block.dropped
        stats.short_history += block.short
        stats.purged += block.purged
        if block.edges is not None:
            self._edges.setdefault((unit.part, unit.group), block.edges)
        return block

    def _seam(self, seam: Seam) -> Block:
        """The block of the windows ending in `seam.owner`'s first rows, on the device."""
        owner = self._edges_of(seam.owner)
        earlier = [self._edges_of(u) for u in seam.earlier]
        try:
            rows, ts, first = seam_rows(earlier, owner, self.window)
        except ValueError as exc:
            uri = self.reader.files.uri(seam.owner.part)
            raise DataError(
                "cannot read the dataset", [f"{uri}: row group {seam.owner.group}: {exc}"]
            ) from None
        block = seam_block(rows, ts, first, self.spec)
        self.reader.check(seam.owner, block)
        self.stats.dropped_non_finite += block.dropped
        self.stats.short_history += block.short
        self.tally.place(len(block.served), block.dropped, block.short)  # rows of `owner`
        return block.to(self.device)

    def _edges_of(self, unit: Unit) -> Edges:
        """A row group's edges: seen already, or read now for them alone (a row group of
        another rank, or history before the split, or one read before a resume)."""
        key = (unit.part, unit.group)
        if key not in self._edges:
            block = self.reader.files.read(unit, self.spec, self.reader.buffers)
            self.reader.release(block)
            if block.edges is None:  # pragma: no cover - a window above 1 always has them
                raise RuntimeError("a windowed read kept no edges")
            self._edges[key] = block.edges
        return self._edges[key]
