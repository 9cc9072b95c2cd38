"""What the report plots, computed from a job's validation predictions: pure numpy, no I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from trainer.train.metrics import pearson

MAX_POINTS = 2_000
"""Points per plotted line: more cannot be seen and only make the page heavy."""


@dataclass(frozen=True)
class DailyIC:
    day: str
    """`YYYY-MM-DD`, UTC."""
    ic: float
    rows: int


def ic_by_day(ts_ms: np.ndarray, label: np.ndarray, pred: np.ndarray) -> list[DailyIC]:
    """Pearson IC of the predictions within each UTC day of the validation rows."""
    if len(ts_ms) == 0:
        return []
    days = ts_ms.astype(np.int64) // 86_400_000
    out = []
    for day in np.unique(days):
        pick = days == day
        when = dt.datetime.fromtimestamp(int(day) * 86_400, dt.UTC).strftime("%Y-%m-%d")
        out.append(DailyIC(when, pearson(pred[pick], label[pick]), int(pick.sum())))
    return out


def deciles(pred: np.ndarray, label: np.ndarray, buckets: int = 10) -> list[tuple[int, float, int]]:
    """(bucket 1..`buckets`, mean label, rows) for rows grouped by their prediction's rank:
    bucket 1 holds the lowest predictions. A model that ranks well climbs left to right."""
    n = len(pred)
    if n == 0:
        return []
    order = np.argsort(pred, kind="stable")
    bucket = np.empty(n, dtype=np.int64)
    bucket[order] = np.arange(n) * buckets // n
    out = []
    for b in range(buckets):
        pick = bucket == b
        if pick.any():
            out.append((b + 1, float(label[pick].mean()), int(pick.sum())))
    return out


def sign_strategy(
    ts_ms: np.ndarray, label: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative sum of `sign(prediction) × label` over the validation rows in time order:
    what holding the predicted direction would have returned, before any cost, with every
    row's label window counted as if it did not overlap the next. Illustrative only. Returns
    (time in epoch ms, cumulative return), thinned to at most MAX_POINTS."""
    order = np.argsort(ts_ms, kind="stable")
    cum = np.cumsum(np.sign(pred[order]) * label[order].astype(np.float64))
    return thin(ts_ms[order], cum)


def thin(x: np.ndarray, y: np.ndarray, most: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point, the last one always kept, so a line keeps its shape and its end."""
    if len(x) <= most:
        return x, y
    pick = np.unique(np.append(np.linspace(0, len(x) - 1, most).astype(np.int64), len(x) - 1))
    return x[pick], y[pick]
