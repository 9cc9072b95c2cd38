"""Validation metrics of a return forecast: loss, IC, rank IC, directional hit rate."""

from __future__ import annotations

import numpy as np


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks, ties sharing the mean of their positions (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # Collapse ties to their average rank.
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(x)]))
    if len(starts) < len(x):
        avg = (starts + ends - 1) / 2.0
        ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(_ranks(a), _ranks(b))


def evaluate_predictions(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """`val_loss` (MSE), `ic` (Pearson), `rank_ic` (Spearman), `hit_rate` (sign agreement
    where the label moved)."""
    if len(pred) == 0:
        return {"val_loss": float("nan"), "ic": 0.0, "rank_ic": 0.0, "hit_rate": 0.0, "rows": 0}
    moved = label != 0
    hits = np.sign(pred[moved]) == np.sign(label[moved])
    return {
        "val_loss": float(np.mean((pred.astype(np.float64) - label) ** 2)),
        "ic": pearson(pred, label),
        "rank_ic": spearman(pred, label),
        "hit_rate": float(hits.mean()) if moved.any() else 0.0,
        "rows": len(pred),
    }


LOWER_IS_BETTER = frozenset({"loss", "val_loss"})
"""Validation metrics that improve downwards; the others (IC, rank IC, hit rate) upwards."""


def improved(metric: str, value: float, best: float | None, min_delta: float) -> bool:
    """Whether `value` beats `best` by more than `min_delta`: lower is better for the losses,
    higher for the rest."""
    if best is None:
        return True
    if metric in LOWER_IS_BETTER:
        return value < best - min_delta
    return value > best + min_delta
