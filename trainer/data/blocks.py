"""One Parquet row group to one contiguous float32 block: reading it from the object store,
cutting it to the split's time window, dropping non-finite rows."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from trainer.data.plan import DatasetPlan
from trainer.errors import DataError, StorageError
from trainer.storage.base import ObjectStore

# A run-by-run copy of the kept rows beats one fancy-indexed gather while the dropped rows
# are few (the usual case: a handful of NaN rows per group); past this many runs, gather.
_MAX_RUNS = 512
LOCAL_READ_BYTES = 256 << 10
REMOTE_READ_BYTES = 8 << 20


@dataclass(frozen=True)
class Unit:
    """One row group of one partition: what is read, cached, shuffled and sharded."""

    part: int
    """Index into `plan.partitions`."""
    group: int
    """Row-group index inside the partition's `data.parquet`."""
    rows: int
    ts_min: int | None
    ts_max: int | None


@dataclass(frozen=True)
class BlockSpec:
    """What a block holds and which rows it keeps."""

    features: tuple[str, ...]
    label: str
    timestamp: str
    lo: int | None
    """Keep `ts >= lo`; None: no lower cut."""
    hi: int | None
    """Keep `ts < hi`; None: no upper cut."""
    gap: tuple[int, int]
    """The purge gap `[train_end, val_start)`: rows read there are counted as purged."""
    keep_ts: bool = False
    """Keep the kept rows' timestamps beside the block (validation and evaluation)."""

    def outside(self, unit: Unit) -> bool:
        """Row-group statistics prove that no row is inside the window."""
        if self.lo is not None and unit.ts_max is not None and unit.ts_max < self.lo:
            return True
        return self.hi is not None and unit.ts_min is not None and unit.ts_min >= self.hi

    def inside(self, unit: Unit) -> bool:
        """Row-group statistics prove that every row is inside the window."""
        if unit.ts_min is None or unit.ts_max is None:
            return False
        return (self.lo is None or unit.ts_min >= self.lo) and (
            self.hi is None or unit.ts_max < self.hi
        )


@dataclass(frozen=True)
class Block:
    """The kept rows of one row group in ONE float32 allocation: features row-major
    `[rows, F]`, then the labels `[rows]`, so a whole block moves to a device in one copy."""

    data: torch.Tensor
    rows: int
    n_features: int
    ts: torch.Tensor | None
    """int64 timestamps of the kept rows, on the CPU; None unless asked for."""
    source_rows: int
    dropped: int
    """Rows inside the window dropped for a NaN or infinite label or feature."""
    purged: int
    bytes_read: int
    """Compressed bytes of the column chunks read."""
    buffer: torch.Tensor | None = None
    """The pooled allocation `data` is a view of, to hand back once the block is spent."""

    @property
    def x(self) -> torch.Tensor:
        return self.data[: self.rows * self.n_features].view(self.rows, self.n_features)

    @property
    def y(self) -> torch.Tensor:
        return self.data[self.rows * self.n_features :]

    @property
    def nbytes(self) -> int:
        ts = 0 if self.ts is None else self.ts.numel() * 8
        return self.data.numel() * 4 + ts

    def to(self, device: torch.device, non_blocking: bool = False) -> Block:
        if self.data.device == device:
            return self
        moved = self.data.to(device, non_blocking=non_blocking)
        return replace(self, data=moved, buffer=None)


class BufferPool:
    """Block allocations of one fixed size (the plan's largest row group), handed back and
    reused. Freed 16 MB blocks of slightly different sizes fragment the C heap, which then
    grows by a block every few row groups; recycling keeps memory flat. With `pin`, blocks
    live in page-locked memory, which torch's own caching host allocator recycles."""

    def __init__(self, floats: int, pin: bool, keep: int) -> None:
        self.floats, self.pin, self.keep = floats, pin, keep
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, floats: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A tensor of `floats` float32 values, and the pooled buffer it views (or None)."""
        if self.pin or floats > self.floats:
            return torch.empty(floats, dtype=torch.float32, pin_memory=self.pin), None
        with self._lock:
            buf = self._free.pop() if self._free else None
        if buf is None:
            buf = torch.empty(self.floats, dtype=torch.float32)
        return buf[:floats], buf

    def give(self, block: Block) -> None:
        if block.buffer is not None:
            with self._lock:
                if len(self._free) < self.keep:
                    self._free.append(block.buffer)


_local = threading.local()


def _staging(rows: int, cols: int) -> np.ndarray:
    """A per-thread column-major scratch matrix, reused so that each row group does not
    page-fault a fresh 16 MB allocation."""
    buf: np.ndarray | None = getattr(_local, "buf", None)
    if buf is None or buf.size < rows * cols:
        buf = np.empty(rows * cols, np.float32)
        _local.buf = buf
    return buf[: rows * cols].reshape(cols, rows)


def stage_table(
    table: pa.Table, spec: BlockSpec, with_ts: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """A whole decoded row group into the staging matrix (and its timestamps)."""
    stage = _staging(table.num_rows, len(spec.features) + 1)
    for j, name in enumerate((*spec.features, spec.label)):
        _fill(stage[j], table.column(name))
    ts = None
    if with_ts:
        ts = np.empty(table.num_rows, np.int64)
        _fill(ts, table.column(spec.timestamp))
    return stage, ts


def to_block(
    stage: np.ndarray,
    ts: np.ndarray | None,
    spec: BlockSpec,
    cut: bool,
    pool: BufferPool | None = None,
) -> Block:
    """Staged columns `[F + 1, n]` (features, then label) → kept rows → one block, all in
    vectorised numpy (no per-row Python).

    `cut`: apply the time window (the row group straddles it; needs `ts`); `pool`: where the
    block's memory comes from (page-locked when bound for a GPU, so that the copy there can
    run asynchronously)."""
    nf, n = stage.shape[0] - 1, stage.shape[1]
    keep = np.ones(n, bool)
    purged = 0
    if cut and ts is not None:
        if spec.lo is not None:
            keep &= ts >= spec.lo
        if spec.hi is not None:
            keep &= ts < spec.hi
        purged = int(np.count_nonzero((ts >= spec.gap[0]) & (ts < spec.gap[1])))
    # A row's float32 sum is non-finite whenever one of its values is (NaN and inf
    # propagate), so one vectorised pass finds the suspects; finite values that merely
    # overflowed the sum are cleared by the exact check on those few columns.
    with np.errstate(over="ignore", invalid="ignore"):
        suspects = np.flatnonzero(~np.isfinite(stage.sum(axis=0)))
    bad = suspects[~np.isfinite(stage[:, suspects]).all(axis=0)]
    bad = bad[keep[bad]]
    keep[bad] = False
    rows = int(np.count_nonzero(keep))

    if pool is None:
        data, buffer = torch.empty(rows * (nf + 1), dtype=torch.float32), None
    else:
        data, buffer = pool.take(rows * (nf + 1))
    flat = data.numpy()
    x, y = flat[: rows * nf].reshape(rows, nf), flat[rows * nf :]
    if rows == n:
        np.copyto(x, stage[:nf].T)  # the transposing copy: columns become rows
        y[:] = stage[nf]
    else:
        edges = np.flatnonzero(np.diff(keep, prepend=False, append=False))
        if len(edges) // 2 <= _MAX_RUNS:
            at = 0
            for a, b in zip(edges[::2], edges[1::2], strict=True):
                np.copyto(x[at : at + b - a], stage[:nf, a:b].T)
                y[at : at + b - a] = stage[nf, a:b]
                at += b - a
        else:
            idx = np.flatnonzero(keep)
            x[:] = stage[:nf, idx].T
            y[:] = stage[nf, idx]
    kept_ts = torch.from_numpy(ts[keep].copy()) if spec.keep_ts and ts is not None else None
    return Block(data, rows, nf, kept_ts, n, len(bad), purged, 0, buffer)


@dataclass
class _OpenFile:
    file: pa.NativeFile
    users: int = 0


def _fill(out: np.ndarray, column: pa.ChunkedArray) -> None:
    """Copy a column into `out` chunk by chunk: each chunk's numpy view is zero-copy, where
    `ChunkedArray.to_numpy()` would first concatenate into a fresh array."""
    at = 0
    for chunk in column.chunks:
        out[at : at + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
        at += len(chunk)


class PartitionFiles:
    """Open Parquet files and their footers, shared by the reading threads.

    Parquet reads go through `ReadAt`, which is safe to call concurrently, so one open
    file serves every thread; on S3 that saves a HEAD request per row group. Each footer is
    parsed once. At most `keep_open` idle files stay open.

    Columns are read a few at a time, at least `read_bytes` per read: a local read costs
    nothing per call, so single columns (decoded while still in cache); an S3 GET costs a
    round trip, so several megabytes per request."""

    def __init__(self, plan: DatasetPlan, store: ObjectStore, keep_open: int = 16) -> None:
        self.plan, self.store, self.keep_open = plan, store, keep_open
        self._fs = store.arrow_fs()
        local = isinstance(self._fs, pafs.LocalFileSystem)
        self.read_bytes = LOCAL_READ_BYTES if local else REMOTE_READ_BYTES
        self._lock = threading.Lock()
        self._open: OrderedDict[int, _OpenFile] = OrderedDict()
        self._footers: dict[int, pq.FileMetaData] = {}

    def uri(self, part: int) -> str:
        return self.store.uri(self.plan.partitions[part].data)

    @contextmanager
    def open(self, part: int) -> Iterator[tuple[pa.NativeFile, pq.FileMetaData]]:
        with self._lock:
            entry = self._open.get(part)
            if entry is not None:
                entry.users += 1
                self._open.move_to_end(part)
        if entry is None:
            path = self.store.arrow_path(self.plan.partitions[part].data)
            handle = self._fs.open_input_file(path)
            with self._lock:
                entry = self._open.setdefault(part, _OpenFile(handle))
                entry.users += 1
            if entry.file is not handle:  # another thread opened it meanwhile
                handle.close()
        try:
            footer = self._footers.get(part)
            if footer is None:
                footer = self._footers[part] = pq.ParquetFile(entry.file).metadata
            yield entry.file, footer
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
        with_ts = cut or spec.keep_ts
        if with_ts:
            names.append(spec.timestamp)
        try:
            with self.open(unit.part) as (handle, footer):
                stage = _staging(unit.rows, len(spec.features) + 1)
                ts = np.empty(unit.rows, np.int64) if with_ts else None
                rows = {name: stage[j] for j, name in enumerate(names[: len(spec.features) + 1])}
                if ts is not None:
                    rows[spec.timestamp] = ts
                pf = pq.ParquetFile(handle, metadata=footer, pre_buffer=True)
                nbytes = 0
                for group, size in _column_groups(footer, unit.group, names, self.read_bytes):
                    # A few columns at a time: the decoded table and its compressed bytes
                    # stay small (cache-resident locally) instead of a whole row group's.
                    table = pf.read_row_group(unit.group, columns=group, use_threads=True)
                    if table.num_rows != unit.rows:
                        raise ValueError(
                            f"holds {table.num_rows} rows, the pre-flight saw {unit.rows}"
                        )
                    for name in group:
                        column = table.column(name)
                        if name == spec.timestamp and column.null_count:
                            raise ValueError(f"{column.null_count} null timestamp(s)")
                        _fill(rows[name], column)
                    nbytes += size
            block = to_block(stage, ts, spec, cut, pool)
        except (OSError, ValueError, pa.ArrowException, StorageError) as exc:
            raise DataError(
                "cannot read the training data",
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
    chunks = sorted(
        (
            rg.column(c).data_page_offset,
            rg.column(c).path_in_schema,
            rg.column(c).total_compressed_size,
        )
        for c in range(rg.num_columns)
        if rg.column(c).path_in_schema in wanted
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
