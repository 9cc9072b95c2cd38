"""Lookback windows: which rows are samples, the rows a row group hands its neighbours, the
small blocks that serve the windows across a row-group boundary, and windows gathered from
contiguous rows by index arithmetic. Pure numpy and torch, no I/O.

A sample of window `L` is the `L` consecutive rows of one partition ending at the row whose
label it carries. Its rows are contiguous in a block (row-major `[n, F]`), so a window is the
slice `rows[end - L + 1 : end + 1]` and a batch of them one gather of `[batch, L, F]`; nothing
stores a window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Edges:
    """The first and last `L - 1` rows of one row group (features then label, float32
    `[h, F + 1]`, with their int64 timestamps): all that the windows across its boundaries
    need of it, kept beside the block in about `2 (L - 1) / rows` of its memory."""

    head: np.ndarray
    head_ts: np.ndarray
    tail: np.ndarray
    tail_ts: np.ndarray

    @classmethod
    def of(cls, stage: np.ndarray, ts: np.ndarray, window: int) -> Edges:
        """From staged columns `[F + 1, n]` and the rows' timestamps."""
        h = min(window - 1, stage.shape[1])
        n = stage.shape[1]
        return cls(
            np.ascontiguousarray(stage[:, :h].T),
            ts[:h].copy(),
            np.ascontiguousarray(stage[:, n - h :].T),
            ts[n - h :].copy(),
        )

    @property
    def nbytes(self) -> int:
        return self.head.nbytes + self.tail.nbytes + self.head_ts.nbytes + self.tail_ts.nbytes


@dataclass(frozen=True)
class Ends:
    """The samples of a run of rows: where their windows end, and the rows that are no
    sample."""

    ends: np.ndarray
    """int32 positions of the labelled rows, sorted."""
    dropped: int
    """Rows in the split whose window holds a NaN or infinite value (or whose label is one)."""
    short: int
    """Rows in the split with fewer than `L - 1` earlier rows in their partition."""


def window_ends(
    n: int,
    in_split: np.ndarray | None,
    bad_features: np.ndarray,
    bad_labels: np.ndarray,
    window: int,
    first: int = 0,
) -> Ends:
    """The window ends among positions `[first, n)` of `n` contiguous rows of one partition.

    `in_split`: which rows the split keeps (by their own timestamp; None: all);
    `bad_features`/`bad_labels`: positions of the rows with a non-finite feature or label.
    A row is a sample when the split keeps it, its label is finite, it has `window - 1` rows
    before it here, and none of its window's rows has a non-finite feature. One pass of
    prefix sums, no per-row Python."""
    cand = np.arange(first, n, dtype=np.int64)
    if in_split is not None:
        cand = cand[in_split[first:n]]
    whole = cand >= window - 1
    short = int(len(cand) - np.count_nonzero(whole))
    cand = cand[whole]
    ok = np.ones(len(cand), bool)
    if len(bad_features):
        marks = np.zeros(n + 1, np.int32)
        marks[np.asarray(bad_features, np.int64) + 1] = 1
        seen = np.cumsum(marks)
        ok &= seen[cand + 1] == seen[cand + 1 - window]
    if len(bad_labels):
        label_ok = np.ones(n, bool)
        label_ok[bad_labels] = False
        ok &= label_ok[cand]
    ends = cand[ok].astype(np.int32)
    return Ends(ends, int(len(cand) - len(ends)), short)


def seam_rows(
    earlier: Sequence[Edges], owner: Edges, window: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows of the windows that end in `owner`'s first `L - 1` rows: the last `L - 1`
    rows before it (from the tails of `earlier`, nearest row group first), then its head.
    Returns the rows `[m + h, F + 1]`, their timestamps and `m`, where the head starts.
    Raises ValueError naming the seam if the timestamps go back across it."""
    need = window - 1
    pieces: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    for edge in earlier:  # nearest first, so each earlier tail goes in front
        if need <= 0:
            break
        pieces.insert(0, edge.tail[-need:])
        stamps.insert(0, edge.tail_ts[-need:])
        need -= len(pieces[0])
    width = owner.head.shape[1]
    before = np.concatenate(pieces) if pieces else np.empty((0, width), np.float32)
    before_ts = np.concatenate(stamps) if stamps else np.empty(0, np.int64)
    rows = np.concatenate([before, owner.head])
    ts = np.concatenate([before_ts, owner.head_ts])
    check_time_order(ts, "the rows across a row-group boundary")
    return rows, ts, len(before)


def check_time_order(ts: np.ndarray, what: str) -> None:
    """Raise ValueError, naming the row, if the timestamps of `what` go back."""
    back = np.flatnonzero(np.diff(ts) < 0)
    if len(back):
        at = int(back[0])
        raise ValueError(
            f"timestamps go back at row {at + 1} of {what} ({ts[at]} then {ts[at + 1]}): "
            "windows need each partition's rows in time order"
        )


def non_finite_rows(stage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the rows with a NaN or infinite feature, and of those with a non-finite
    label, in staged columns `[F + 1, n]` (features, then the label).

    A row's float32 sum is non-finite whenever one of its values is (NaN and inf propagate),
    so one vectorised pass finds the suspects; finite values that merely overflowed the sum
    are cleared by the exact check on those few columns."""
    nf = stage.shape[0] - 1
    with np.errstate(over="ignore", invalid="ignore"):
        suspects = np.flatnonzero(~np.isfinite(stage[:nf].sum(axis=0)))
    bad_features = suspects[~np.isfinite(stage[:nf, suspects]).all(axis=0)]
    return bad_features, np.flatnonzero(~np.isfinite(stage[nf]))


def window_index(ends: torch.Tensor, window: int) -> torch.Tensor:
    """The row numbers of the windows ending at `ends`, flattened `[len(ends) * window]`,
    oldest row first: one gather of them and a view make `[batch, window, F]`."""
    offsets = torch.arange(1 - window, 1, device=ends.device, dtype=torch.int64)
    return (ends.to(torch.int64)[:, None] + offsets).reshape(-1)


class Windows:
    """Samples held as contiguous rows and, for windows, the row each one ends at; slicing
    gathers the samples as the model takes them: `[n, F]` for a window of 1, `[n, L, F]`
    otherwise. Memory stays that of the rows, whatever `L`."""

    def __init__(self, rows: torch.Tensor, ends: torch.Tensor | None, window: int) -> None:
        if (ends is None) != (window == 1):
            raise ValueError("window ends are given exactly when the window is above 1")
        self.rows, self.ends, self.window = rows, ends, window

    def __len__(self) -> int:
        return len(self.rows) if self.ends is None else len(self.ends)

    def __getitem__(self, at: slice | torch.Tensor) -> torch.Tensor:
        """The samples `at` (a slice, or a tensor of sample numbers), gathered."""
        if self.ends is None:
            return self.rows[at]
        ends = self.ends[at]
        picked = self.rows.index_select(0, window_index(ends, self.window))
        return picked.view(len(ends), self.window, self.rows.shape[1])

    def to(self, device: torch.device) -> Windows:
        ends = None if self.ends is None else self.ends.to(device)
        return Windows(self.rows.to(device), ends, self.window)
