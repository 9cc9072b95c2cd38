"""Batches from one shuffle buffer of blocks: each batch's rows gathered block by block
straight into the output, with numpy on the CPU and torch on the GPU."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from trainer.data.blocks import Block
from trainer.data.order import Segment
from trainer.data.windows import window_index

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""x, y, and ts when asked for."""


@dataclass
class BufferSource:
    """What the gathers of one buffer read: numpy views of the blocks on the CPU; on a GPU
    the blocks and the row numbers, copied there once per buffer (pinned, asynchronous)
    rather than once per batch."""

    blocks: Sequence[Block]
    local: np.ndarray
    xs: list[np.ndarray]
    ys: list[np.ndarray]
    rows: torch.Tensor | None
    """`local` on the GPU; None on the CPU."""
    window: int = 1
    """Rows per sample: above 1, `local` holds each window's last row."""

    @classmethod
    def of(
        cls, blocks: Sequence[Block], local: np.ndarray, device: torch.device, window: int = 1
    ) -> BufferSource:
        if device.type == "cpu":
            xs = [b.x_stored.numpy() for b in blocks]
            return cls(blocks, local, xs, [b.y_stored.numpy() for b in blocks], None, window)
        rows = torch.from_numpy(local).pin_memory().to(device, non_blocking=True)
        return cls(blocks, local, [], [], rows, window)


def gather(src: BufferSource, seg: Segment, n_features: int, with_ts: bool) -> Batch:
    """One batch's samples, block by block, straight into their slice of the output (the
    order inside a batch does not matter to a mean loss, only which samples share it).
    Windows are gathered the same way, `window` rows per sample ending at the listed row:
    `[n, window, F]`, one gather from the block's contiguous rows."""
    n, s, local, w = seg.end - seg.start, seg.start, src.local, src.window
    runs = [(k, a, b) for k, (a, b) in enumerate(itertools.pairwise(seg.cuts)) if a < b]
    shape = (n, n_features) if w == 1 else (n, w, n_features)
    if src.rows is None:
        # numpy's take: single-threaded, GIL-free, writing in place ("clip" skips the
        # bounds-check buffering). torch's index_select would wake OpenMP threads that
        # spin against the decoding threads for the same cores.
        xn, yn = np.empty(shape, np.float32), np.empty(n, np.float32)
        offsets = np.arange(1 - w, 1, dtype=np.int64)
        for k, a, b in runs:
            rows = local[a:b] if w == 1 else (local[a:b, None] + offsets).reshape(-1)
            out = xn[a - s : b - s].reshape(-1, n_features)
            np.take(src.xs[k], rows, axis=0, out=out, mode="clip")
            np.take(src.ys[k], local[a:b], out=yn[a - s : b - s], mode="clip")
        x, y = torch.from_numpy(xn), torch.from_numpy(yn)
    else:
        device = src.rows.device
        x = torch.empty(shape, dtype=torch.float32, device=device)
        y = torch.empty(n, dtype=torch.float32, device=device)
        for k, a, b in runs:
            blk, ends = src.blocks[k], src.rows[a:b]
            picked = ends if w == 1 else window_index(ends, w)
            torch.index_select(blk.x_stored, 0, picked, out=x[a - s : b - s].view(-1, n_features))
            torch.index_select(blk.y_stored, 0, ends, out=y[a - s : b - s])
    if not with_ts:
        return x, y, None
    ts = []
    for k, a, b in runs:
        stamps = src.blocks[k].ts
        if stamps is not None:
            ts.append(stamps.numpy()[local[a:b]])
    return x, y, torch.from_numpy(np.concatenate(ts) if ts else np.empty(0, np.int64))


def rows_in(pieces: list[Batch]) -> int:
    return sum(len(p[1]) for p in pieces)


def join(pieces: list[Batch]) -> Batch:
    """One batch from the pieces two buffers contributed."""
    if len(pieces) == 1:
        return pieces[0]
    ts = [p[2] for p in pieces if p[2] is not None]
    return _cat([p[0] for p in pieces]), _cat([p[1] for p in pieces]), _cat(ts) if ts else None


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """`torch.cat`, through numpy on the CPU: torch's would wake OpenMP threads that then
    spin against the reading threads."""
    if parts[0].is_cuda:
        return torch.cat(parts)
    return torch.from_numpy(np.concatenate([p.numpy() for p in parts]))
