"""Batches from shuffle buffers of blocks: each batch's rows gathered block by block
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


@dataclass
class Filling:
    """One batch's output, allocated whole, and the samples written into it so far: a batch
    that two buffers share is gathered straight into it, never joined from pieces (which
    would hold a second copy of the batch while it is made)."""

    x: torch.Tensor
    y: torch.Tensor
    ts: list[np.ndarray]
    rows: int = 0

    def batch(self) -> Batch:
        """What is filled so far (all of it but for an epoch's short last batch)."""
        n, ts = self.rows, self.ts
        stamps = torch.from_numpy(np.concatenate(ts)) if ts else None
        return self.x[:n], self.y[:n], stamps


def output(src: BufferSource, rows: int, n_features: int) -> Filling:
    """An empty batch of `rows` samples where `src` gathers (on the host or the GPU)."""
    w = src.window
    shape = (rows, n_features) if w == 1 else (rows, w, n_features)
    if src.rows is None:
        # numpy's allocation, not torch's: torch's would wake OpenMP threads for nothing
        x, y = (
            torch.from_numpy(np.empty(shape, np.float32)),
            torch.from_numpy(np.empty(rows, np.float32)),
        )
    else:
        device = src.rows.device
        x = torch.empty(shape, dtype=torch.float32, device=device)
        y = torch.empty(rows, dtype=torch.float32, device=device)
    return Filling(x, y, [])


def gather(src: BufferSource, seg: Segment, into: Filling, with_ts: bool) -> None:
    """One segment's samples, block by block, straight into the next rows of `into` (the
    order inside a batch does not matter to a mean loss, only which samples share it).
    Windows are gathered the same way, `window` rows per sample ending at the listed row:
    `[n, window, F]`, one gather from the block's contiguous rows."""
    s, local, w, at = seg.start, src.local, src.window, into.rows - seg.start
    n_features = into.x.shape[-1]
    runs = [(k, a, b) for k, (a, b) in enumerate(itertools.pairwise(seg.cuts)) if a < b]
    if src.rows is None:
        # numpy's take: single-threaded, GIL-free, writing in place ("clip" skips the
        # bounds-check buffering). torch's index_select would wake OpenMP threads that
        # spin against the decoding threads for the same cores.
        xn, yn = into.x.numpy(), into.y.numpy()
        offsets = np.arange(1 - w, 1, dtype=np.int64)
        for k, a, b in runs:
            rows = local[a:b] if w == 1 else (local[a:b, None] + offsets).reshape(-1)
            out = xn[at + a : at + b].reshape(-1, n_features)
            np.take(src.xs[k], rows, axis=0, out=out, mode="clip")
            np.take(src.ys[k], local[a:b], out=yn[at + a : at + b], mode="clip")
    else:
        for k, a, b in runs:
            blk, ends = src.blocks[k], src.rows[a:b]
            picked = ends if w == 1 else window_index(ends, w)
            dest = into.x[at + a : at + b].view(-1, n_features)
            torch.index_select(blk.x_stored, 0, picked, out=dest)
            torch.index_select(blk.y_stored, 0, ends, out=into.y[at + a : at + b])
    into.rows += seg.end - s
    if with_ts:
        for k, a, b in runs:
            stamps = src.blocks[k].ts
            if stamps is not None:
                into.ts.append(stamps.numpy()[local[a:b]])
