"""Row groups to blocks on the device, ahead of need: open files and footers shared by the
reading threads, column reads sized for the store, cache lookups, a bounded queue of
reads, recycled or pinned host memory, and the copy to the device."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from trainer.data.blocks import (
    Block,
    BlockSpec,
    BufferPool,
    Unit,
    fill_column,
    resolve_device,
    staging,
    to_block,
)
from trainer.data.cache import BlockCache
from trainer.data.plan import DatasetPlan
from trainer.errors import DataError, StorageError
from trainer.store.base import ObjectStore, store_failure
from trainer.store.records import PartitionMeta

LOCAL_READ_BYTES = 256 << 10
REMOTE_READ_BYTES = 8 << 20
LOCAL_KEEP_OPEN = 64
READ_THREADS = 3
"""Row groups in flight on a remote store, and at most on a local one."""


def reading_threads(store: ObjectStore) -> int:
    """Reading threads when the caller names none: a remote read waits on the network, so
    `READ_THREADS` are in flight whatever the machine; a local one is decoding, so no more
    threads than cores (more only take turns, at the cost of switching)."""
    if _is_local(store.arrow_fs()):
        return min(READ_THREADS, usable_cores())
    return READ_THREADS


def _is_local(fs: pafs.FileSystem) -> bool:
    """Reads on `fs` decode files on this machine, with no round trip to pay."""
    return isinstance(fs, pafs.LocalFileSystem)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container's CPU set
    narrows), not every core of the host."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return max(os.cpu_count() or 1, 1)


@dataclass
class _OpenFile:
    file: pa.NativeFile
    users: int = 0


class PartitionFiles:
    """Open Parquet files, shared by every reader of one job.

    The footers come parsed from the pre-flight plan, so a reader fetches nothing but
    column chunks. Parquet reads go through `ReadAt`, which is safe to call concurrently,
    so one open file serves every thread. Opening costs a HEAD on S3 and holds no
    connection, so remote files stay open for the whole job (one HEAD per file); local
    files cost a descriptor each, so at most `LOCAL_KEEP_OPEN` idle ones stay open.

    Columns are read a few at a time, at least `read_bytes` per read: a local read costs
    nothing per call, so single columns (decoded while still in cache); an S3 GET costs a
    round trip, so several megabytes per request, each read's ranges fetched together
    (`pre_buffer`). Locally that coalescing only hands every read to Arrow's I/O threads
    and back: about 15% more CPU for the same rows, so local files are read in place."""

    def __init__(self, plan: DatasetPlan, store: ObjectStore) -> None:
        self.plan, self.store = plan, store
        self._fs = store.arrow_fs()
        self.local = local = _is_local(self._fs)
        self.read_bytes = LOCAL_READ_BYTES if local else REMOTE_READ_BYTES
        self.keep_open = LOCAL_KEEP_OPEN if local else len(plan.partitions)
        self._lock = threading.Lock()
        self._open: OrderedDict[int, _OpenFile] = OrderedDict()

    def uri(self, part: int) -> str:
        return self.store.uri(self.plan.partitions[part].data)

    @contextmanager
    def open(self, part: int) -> Iterator[tuple[pa.NativeFile, pq.FileMetaData]]:
        info = self.plan.partitions[part]
        with self._lock:
            entry = self._open.get(part)
            if entry is not None:
                entry.users += 1
                self._open.move_to_end(part)
        if entry is None:
            handle = self._fs.open_input_file(self.store.arrow_path(info.data))
            if (size := handle.size()) != info.bytes:
                handle.close()
                raise ValueError(
                    f"is {size} bytes, the pre-flight saw {info.bytes}: the file "
                    "changed since; run the job again to plan it anew"
                )
            with self._lock:
                entry = self._open.setdefault(part, _OpenFile(handle))
                entry.users += 1
            if entry.file is not handle:  # another thread opened it meanwhile
                handle.close()
        try:
            yield entry.file, info.footer
        finally:
            with self._lock:
                entry.users -= 1
                idle = [p for p, e in self._open.items() if e.users == 0]
                for p in idle[: max(len(self._open) - self.keep_open, 0)]:
                    self._open.pop(p).file.close()

    def close(self) -> None:
        with self._lock:
            for entry in self._open.values():
                entry.file.close()
            self._open.clear()

    def read(self, unit: Unit, spec: BlockSpec, pool: BufferPool) -> Block:
        """Read one row group into a block. Every storage or Parquet failure becomes a
        DataError naming the partition."""
        cut = not spec.inside(unit)
        names = [*spec.features, spec.label]
        with_ts = cut or spec.keep_ts or spec.window > 1
        if with_ts:
            names.append(spec.timestamp)
        try:
            with self.open(unit.part) as (handle, footer):
                stage = staging(unit.rows, len(spec.features) + 1)
                ts = np.empty(unit.rows, np.int64) if with_ts else None
                rows = {name: stage[j] for j, name in enumerate(names[: len(spec.features) + 1])}
                if ts is not None:
                    rows[spec.timestamp] = ts
                pf = pq.ParquetFile(handle, metadata=footer, pre_buffer=not self.local)
                nbytes = 0
                for group, size in _column_groups(footer, unit.group, names, self.read_bytes):
                    # A few columns at a time: the decoded table and its compressed bytes
                    # stay small (cache-resident locally) instead of a whole row group's.
                    # one thread: the reader runs several row groups side by side already,
                    # and Arrow's own pool on top would only add hand-offs and spinning
                    table = pf.read_row_group(unit.group, columns=group, use_threads=False)
                    if table.num_rows != unit.rows:
                        raise ValueError(
                            f"holds {table.num_rows} rows, the pre-flight saw {unit.rows}"
                        )
                    for name in group:
                        column = table.column(name)
                        if name == spec.timestamp and column.null_count:
                            raise ValueError(f"{column.null_count} null timestamp(s)")
                        fill_column(rows[name], column)
                    nbytes += size
            if ts is not None:
                _inside_partition(ts, self.plan.partitions[unit.part].meta)
            # A partition's first row group serves every window it can; later ones leave
            # their first rows' windows to the seam with the row group before.
            first = 0 if unit.offset == 0 else spec.window - 1
            block = to_block(stage, ts, spec, cut, pool, first)
        except (OSError, ValueError, IndexError, pa.ArrowException, StorageError) as exc:
            if (failed := store_failure(exc, self.uri(unit.part))) is not None:
                raise failed from None  # the store, not the data: exit 8, never a data error
            raise DataError(
                "cannot read the dataset",
                [f"{self.uri(unit.part)}: row group {unit.group}: {exc}"],
            ) from None
        return replace(block, bytes_read=nbytes)


def _column_groups(
    footer: pq.FileMetaData, group: int, names: Sequence[str], read_bytes: int
) -> list[tuple[list[str], int]]:
    """The wanted columns in file order, grouped into reads of at least `read_bytes`
    compressed bytes each (with their sizes)."""
    rg = footer.row_group(group)
    wanted = set(names)
    columns = (rg.column(c) for c in range(rg.num_columns))
    chunks = sorted(
        (col.data_page_offset, col.path_in_schema, col.total_compressed_size)
        for col in columns
        if col.path_in_schema in wanted
    )
    found = {name for _, name, _ in chunks}
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"no column {', '.join(missing)}")
    groups: list[tuple[list[str], int]] = []
    for _, name, size in chunks:
        if groups and groups[-1][1] < read_bytes:
            groups[-1][0].append(name)
            groups[-1] = (groups[-1][0], groups[-1][1] + size)
        else:
            groups.append(([name], size))
    return groups


class BlockReader:
    """Reads one split's row groups into blocks on `device`.

    `files_in_flight` threads read and decode (pyarrow and numpy release the GIL, so they
    overlap each other and the training step); at most `ahead` blocks wait, done or not,
    in front of the consumer, which bounds memory whatever the relative speeds."""

    def __init__(
        self,
        plan: DatasetPlan,
        store: ObjectStore,
        spec: BlockSpec,
        *,
        device: torch.device,
        files_in_flight: int,
        ahead: int,
        cache: BlockCache | None,
        non_finite: str = "drop",
        files: PartitionFiles | None = None,
    ) -> None:
        self.spec, self.cache, self.non_finite = spec, cache, non_finite
        self.device = device = resolve_device(device)
        self.files_in_flight, self.ahead = files_in_flight, ahead
        # A job's readers share one table of open files; a reader given none keeps its own.
        self._own_files = files is None
        self.files = files if files is not None else PartitionFiles(plan, store)
        largest = max((rg.rows for p in plan.partitions for rg in p.row_groups), default=0)
        self.buffers = BufferPool(
            largest * (len(spec.features) + 1),
            pin=device.type == "cuda",
            keep=2 * ahead + files_in_flight,
        )
        self._threads: ThreadPoolExecutor | None = None
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._early: dict[tuple[object, ...], Future[Block]] = {}
        """Reads begun by `read_early`, by cache key, for the next `stream` to take up."""
        self.early_dropped = 0
        """Row groups read early that no stream took up: reading spent for nothing."""

    def key(self, unit: Unit) -> tuple[object, ...]:
        """Cache key: the object, the row group, and everything that shapes the block."""
        s = self.spec
        shape = (s.lo, s.hi, s.features, s.label, s.keep_ts, s.window)
        return (self.files.uri(unit.part), unit.group, *shape)

    def read_early(self, units: Sequence[Unit]) -> list[Future[Block]]:
        """Begin reading `units` now, on the reading threads, for a later `stream` that
        starts with them: the row groups arrive while the caller does other work. A stream
        that starts elsewhere drops them. Returns the reads, for a caller that waits."""
        threads = self._pool()
        reads = []
        for unit in units[: self.ahead]:
            key = self.key(unit)
            if key not in self._early:
                self._early[key] = threads.submit(self.files.read, unit, self.spec, self.buffers)
            reads.append(self._early[key])
        return reads

    def _drop_early(self, keep: set[tuple[object, ...]]) -> None:
        """Early reads this stream does not start with: cancelled, or their memory returned
        once read (a failed one fails nothing: nothing asked for it)."""
        for key in [k for k in self._early if k not in keep]:
            self._early.pop(key).add_done_callback(self._release_read)
            self.early_dropped += 1

    def _release_read(self, job: Future[Block]) -> None:
        if not job.cancelled() and job.exception() is None:
            self.release(job.result())

    def _pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.files_in_flight, "loader-read")
        return self._threads

    def stream(self, units: Sequence[Unit]) -> Generator[tuple[Unit, Block, bool], None, None]:
        """`(unit, block on the device, cache hit)` for each unit, in order."""
        threads = self._pool()
        self._drop_early({self.key(u) for u in units[: self.ahead]})
        pending: deque[tuple[Unit, Future[Block] | Block]] = deque()
        todo = iter(units)
        try:
            while True:
                while len(pending) < self.ahead and (unit := next(todo, None)) is not None:
                    key = self.key(unit)
                    early = self._early.pop(key, None)
                    hit = self.cache.get(key) if self.cache is not None else None
                    if hit is None:
                        job: Future[Block] | Block = early or threads.submit(
                            self.files.read, unit, self.spec, self.buffers
                        )
                    else:
                        if early is not None:  # served from the cache after all
                            early.add_done_callback(self._release_read)
                        if hit.lease is not None:
                            hit.lease.hold()  # the consumer's hold: eviction cannot recycle it
                        job = hit
                    pending.append((unit, job))
                if not pending:
                    return
                unit, job = pending.popleft()
                if isinstance(job, Block):
                    self.check(unit, job)
                    if self.buffers.pin and not job.data.is_cuda and not job.data.is_pinned():
                        # A host cache filled by a CPU pass (feature statistics): pin each
                        # block once, so every later epoch's copy to the GPU is asynchronous.
                        pinned = replace(job, data=job.data.pin_memory(), lease=None)
                        self.release(job)
                        job = pinned
                        if self.cache is not None:
                            self.cache.put(self.key(unit), job)
                    yield unit, self._to_device(job), True
                    continue
                block = job.result()
                self.check(unit, block)
                moved = self._to_device(block)
                if self.cache is not None:
                    # whichever copy already sits on the cache's device: no second transfer
                    on_cache = moved.data.device == self.cache.device
                    self.cache.put(self.key(unit), moved if on_cache else block)
                yield unit, moved, False
        finally:
            for _, job in pending:
                if isinstance(job, Future):
                    job.cancel()

    def check(self, unit: Unit, block: Block) -> None:
        """Under `non_finite="fail"`, a block that dropped anything fails the job."""
        if block.dropped and self.non_finite == "fail":
            what = "row(s)" if block.ends is None else "window(s) of rows"
            raise DataError(
                "non-finite values in the data (data.non_finite is 'fail'; 'drop' skips them)",
                [
                    f"{self.files.uri(unit.part)}: row group {unit.group}: {block.dropped} "
                    f"{what} with a NaN or infinite label or feature"
                ],
            )

    def release(self, block: Block) -> None:
        """The consumer is done with a block: once the cache lets go of it too, its host
        memory serves another row group."""
        if block.lease is not None:
            block.lease.let_go()

    def close(self, wait: bool = False) -> None:
        self._drop_early(set())
        if self._threads is not None:
            self._threads.shutdown(wait=wait, cancel_futures=True)
            self._threads = None
        if self._own_files:
            self.files.close()

    def _to_device(self, block: Block) -> Block:
        if block.data.device == self.device:
            return block
        if self._copy_stream is None:
            return block.to(self.device)
        # The copy runs on a side stream, so it overlaps the kernels already queued (its
        # pinned source was written by the host, so it waits for nothing on the GPU); the
        # compute stream waits for it, and record_stream stops the caching allocator from
        # handing the memory to another stream while compute may still read it.
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            moved = block.to(self.device, non_blocking=True)
        compute.wait_stream(self._copy_stream)
        moved.data.record_stream(compute)
        return moved


def _inside_partition(ts: np.ndarray, meta: PartitionMeta) -> None:
    """A row group's timestamps lie inside its partition's `ts_min..ts_max` (which the
    pre-flight checked against the date); ValueError naming how many do not."""
    outside = np.count_nonzero((ts < meta.ts_min) | (ts > meta.ts_max))
    if outside:
        raise ValueError(
            f"{outside} timestamp(s) outside meta.json's ts_min..ts_max "
            f"{meta.ts_min}..{meta.ts_max} (date {meta.date})"
        )
