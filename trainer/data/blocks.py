"""Decoded row-group columns to one contiguous float32 block: the split's time window, the
non-finite filter, and the recycled memory blocks live in. Pure numpy, no I/O."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch

from trainer.data.windows import Edges, check_time_order, non_finite_rows, window_ends


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
    offset: int = 0
    """Rows of the partition before this row group: 0 for its first."""


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
    """Keep the rows' timestamps beside the block (validation and evaluation)."""
    window: int = 1
    """Rows per sample (`data.window`): above 1 the block also lists its window ends and keeps
    its edges for the windows across its boundaries."""

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
    """One row group in ONE float32 allocation: features row-major `[n, F]`, then labels
    `[n]`, so a whole block moves to a device in one copy. Rows outside the window or with
    a non-finite value stay in place (compacting would cost another pass over the block)
    and are skipped through `index`, the rows to serve."""

    data: torch.Tensor
    stored: int
    """Rows in `data`, served or not."""
    n_features: int
    index: np.ndarray | None
    """Positions of the served rows in `data` (int32, sorted); None: every row."""
    ts: torch.Tensor | None
    """int64 timestamps of the stored rows, on the CPU; None unless asked for."""
    dropped: int
    """Rows inside the window with a NaN or infinite label or feature."""
    purged: int
    bytes_read: int
    """Compressed bytes of the column chunks read."""
    lease: Lease | None = None
    """The holders of the pooled memory `data` lives in; None when not pooled."""
    ends: np.ndarray | None = None
    """With a window above 1: the int32 positions of the rows whose windows this block serves
    (`dropped` and `short` then count windows); None for one row per sample."""
    edges: Edges | None = None
    """With a window above 1: the rows this row group hands the windows across its edges."""
    short: int = 0
    """Rows of the split served here with too few earlier rows in their partition."""

    @property
    def rows(self) -> int:
        """Rows served."""
        return self.stored if self.index is None else len(self.index)

    @property
    def served(self) -> np.ndarray:
        """The samples this block serves, as positions of their (last) rows."""
        if self.ends is not None:
            return self.ends
        return np.arange(self.stored, dtype=np.int32) if self.index is None else self.index

    @property
    def x_stored(self) -> torch.Tensor:
        return self.data[: self.stored * self.n_features].view(self.stored, self.n_features)

    @property
    def y_stored(self) -> torch.Tensor:
        return self.data[self.stored * self.n_features : self.stored * (self.n_features + 1)]

    @property
    def ts_served(self) -> np.ndarray | None:
        if self.ts is None:
            return None
        return self.ts.numpy() if self.index is None else self.ts.numpy()[self.index]

    @property
    def x(self) -> torch.Tensor:
        """The served rows' features (a copy when some rows are skipped)."""
        return self.x_stored if self.index is None else self.x_stored[self._sel()]

    @property
    def y(self) -> torch.Tensor:
        return self.y_stored if self.index is None else self.y_stored[self._sel()]

    def _sel(self) -> torch.Tensor:
        return torch.from_numpy(self.index).to(self.data.device, torch.int64)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.index is None else self.index.nbytes
        extra += 0 if self.ends is None else self.ends.nbytes
        extra += 0 if self.edges is None else self.edges.nbytes
        return self.data.numel() * 4 + extra + (0 if self.ts is None else self.ts.numel() * 8)

    def to(self, device: torch.device, non_blocking: bool = False) -> Block:
        if self.data.device == device:
            return self
        moved = self.data.to(device, non_blocking=non_blocking)
        return replace(self, data=moved, lease=None)


class Lease:
    """Who still holds one pooled buffer (the consumer, the cache); when the last one lets
    go, the buffer goes back to its pool. A holder that never lets go (a caller keeping a
    block) costs nothing but the reuse: the memory is then freed as usual."""

    def __init__(self, pool: BufferPool, buffer: torch.Tensor) -> None:
        self.pool, self.buffer, self.holders = pool, buffer, 1

    def hold(self) -> None:
        with self.pool.lock:
            self.holders += 1

    def let_go(self) -> None:
        with self.pool.lock:
            self.holders -= 1
            if self.holders == 0 and len(self.pool.free) < self.pool.keep:
                self.pool.free.append(self.buffer)


class BufferPool:
    """Block memory of one fixed size (the plan's largest row group), reused. A fresh 16 MB
    allocation costs thousands of page faults (about 10 ms here), and freed blocks of
    slightly different sizes fragment the C heap, which then keeps growing; recycled
    buffers cost neither. With `pin`, blocks live in page-locked memory, which torch's own
    caching host allocator recycles."""

    def __init__(self, floats: int, pin: bool, keep: int) -> None:
        self.floats, self.pin, self.keep = floats, pin, keep
        self.free: list[torch.Tensor] = []
        self.lock = threading.Lock()

    def take(self, floats: int) -> tuple[torch.Tensor, Lease | None]:
        """`floats` float32 values, and the lease on the pooled buffer they live in."""
        if self.pin or floats > self.floats:
            return torch.empty(floats, dtype=torch.float32, pin_memory=self.pin), None
        with self.lock:
            buf = self.free.pop() if self.free else None
        if buf is None:
            buf = torch.empty(self.floats, dtype=torch.float32)
        return buf[:floats], Lease(self, buf)


def resolve_device(device: torch.device | str) -> torch.device:
    """`cuda` → `cuda:<current>`, so that device comparisons see one device as one."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


_local = threading.local()


def staging(rows: int, cols: int) -> np.ndarray:
    """A per-thread column-major scratch matrix, reused so that each row group does not
    page-fault a fresh 16 MB allocation."""
    buf: np.ndarray | None = getattr(_local, "buf", None)
    if buf is None or buf.size < rows * cols:
        buf = np.empty(rows * cols, np.float32)
        _local.buf = buf
    return buf[: rows * cols].reshape(cols, rows)


def in_window(ts: np.ndarray, spec: BlockSpec) -> np.ndarray:
    """Which rows the split's time window keeps."""
    keep = np.ones(len(ts), bool)
    if spec.lo is not None:
        keep &= ts >= spec.lo
    if spec.hi is not None:
        keep &= ts < spec.hi
    return keep


def to_block(
    stage: np.ndarray,
    ts: np.ndarray | None,
    spec: BlockSpec,
    cut: bool,
    pool: BufferPool | None = None,
    first_end: int = 0,
) -> Block:
    """Staged columns `[F + 1, n]` (features, then label) → one row-major block and the
    rows it serves, all in vectorised numpy (no per-row Python).

    `cut`: apply the time window (the row group straddles it; needs `ts`); `pool`: where the
    block's memory comes from (page-locked when bound for a GPU, so that the copy there can
    run asynchronously). With a window above 1 (`ts` needed): `first_end`, the first row
    whose window this block serves (the earlier ones need the row group before, and are
    served across the seam); the timestamps must not go back."""
    nf, n = stage.shape[0] - 1, stage.shape[1]
    keep = np.ones(n, bool)
    purged = 0
    if cut and ts is not None:
        keep = in_window(ts, spec)
        purged = int(np.count_nonzero((ts >= spec.gap[0]) & (ts < spec.gap[1])))
    bad_features, bad_labels = non_finite_rows(stage)
    ends = edges = None
    short = window_dropped = 0
    if spec.window > 1:
        if ts is None:
            raise ValueError("windows need the rows' timestamps")
        check_time_order(ts, "the row group")
        found = window_ends(
            n, keep if cut else None, bad_features, bad_labels, spec.window, first_end
        )
        ends, short, window_dropped = found.ends, found.short, found.dropped
        edges = Edges.of(stage, ts, spec.window)
    bad = np.union1d(bad_features, bad_labels)
    bad = bad[keep[bad]]
    keep[bad] = False
    if pool is None:
        data, lease = torch.empty(n * (nf + 1), dtype=torch.float32), None
    else:
        data, lease = pool.take(n * (nf + 1))
    flat = data.numpy()
    np.copyto(flat[: n * nf].reshape(n, nf), stage[:nf].T)  # transposing: columns to rows
    flat[n * nf :] = stage[nf]
    all_kept = bool(keep.all())
    index = None if all_kept else np.flatnonzero(keep).astype(np.int32)
    kept_ts = torch.from_numpy(ts.copy()) if spec.keep_ts and ts is not None else None
    dropped = len(bad) if ends is None else window_dropped
    return Block(data, n, nf, index, kept_ts, dropped, purged, 0, lease, ends, edges, short)


def seam_block(rows: np.ndarray, ts: np.ndarray, first: int, spec: BlockSpec) -> Block:
    """The small block of the windows across a row-group boundary (`windows.seam_rows`): rows
    `[m + h, F + 1]` whose windows end at positions `first` onwards."""
    n, nf = rows.shape[0], rows.shape[1] - 1
    bad_features, bad_labels = non_finite_rows(rows.T)
    found = window_ends(n, in_window(ts, spec), bad_features, bad_labels, spec.window, first)
    data = torch.from_numpy(np.concatenate([rows[:, :nf].ravel(), rows[:, nf]]))
    kept_ts = torch.from_numpy(ts) if spec.keep_ts else None
    index = np.zeros(0, np.int32)  # no row of its own to serve: its rows belong to others
    return Block(
        data, n, nf, index, kept_ts, found.dropped, 0, 0, None, found.ends, None, found.short
    )


def fill_column(out: np.ndarray, column: pa.ChunkedArray) -> None:
    """Copy a column into `out` chunk by chunk: each chunk's numpy view is zero-copy, where
    `ChunkedArray.to_numpy()` would first concatenate into a fresh array."""
    if column.num_chunks == 1:  # a row group read whole: one chunk
        out[:] = chunk_values(column.chunk(0))
        return
    at = 0
    for chunk in column.chunks:
        out[at : at + len(chunk)] = chunk_values(chunk)
        at += len(chunk)


_VIEWABLE = {
    kind: np.dtype(kind.to_pandas_dtype())
    for kind in (
        *(pa.float16(), pa.float32(), pa.float64()),
        *(pa.int8(), pa.int16(), pa.int32(), pa.int64()),
        *(pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()),
    )
}
"""Arrow's fixed-width number types and the numpy dtype each one's data buffer holds."""


def chunk_values(chunk: pa.Array) -> np.ndarray:
    """One chunk's values as numpy. Numbers without nulls are viewed straight on the chunk's
    data buffer: pyarrow's `Array.to_numpy`, zero-copy as it is, spends about 3 ms a
    million values on its first call for an array (0.1 CPU-s per million rows of 41
    columns, a sixth of the loader's work), the view nothing. Anything else (nulls, which
    become NaN; dictionaries; booleans) goes through `to_numpy`."""
    dtype = _VIEWABLE.get(chunk.type)
    if dtype is not None and chunk.null_count == 0:
        data = chunk.buffers()[1]
        return np.frombuffer(data, dtype, len(chunk), chunk.offset * dtype.itemsize)
    return np.asarray(chunk.to_numpy(zero_copy_only=False))
