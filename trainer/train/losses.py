"""The built-in training losses (`mse`, `huber`, `ic`) and the spec's loss on validation rows.

A loss maps `(pred [batch], target [batch])` to a scalar tensor, lower is better; a
researcher's own loss (`train.loss: package.module:function`) has the same shape and is
looked up by the model stage, which hands the loop a plain callable."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from trainer.train.metrics import evaluate_predictions

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`(pred [batch], target [batch]) -> scalar`, lower is better."""


def prediction_shape_problem(shape: Sequence[int], rows: int) -> str | None:
    """What is wrong with predictions of `shape` for a batch of `rows`; None: nothing. The
    model proof and the training step both say it in these words."""
    if tuple(shape) == (rows,):
        return None
    hint = " (squeeze the last dimension)" if tuple(shape) == (rows, 1) else ""
    return (
        f"forward returned shape {list(shape)} for {rows} rows; it must return one "
        f"prediction per row, [batch]{hint}"
    )


BUILTIN_LOSSES = ("mse", "huber", "ic")


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(pred, target)


def huber(delta: float) -> LossFn:
    """Squared below `delta`, linear above it: big moves in fat-tailed returns pull less."""

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.huber_loss(pred, target, delta=delta)

    return loss


def negative_ic(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Minus the Pearson correlation of predictions and labels within the batch: scale-free,
    so only the ordering and shape of the predictions is learnt, not their size."""
    p = pred - pred.mean()
    t = target - target.mean()
    # eps inside the roots: a constant batch of predictions still has a finite gradient
    eps = 1e-8
    return -(p * t).sum() / (torch.sqrt((p * p).sum() + eps) * torch.sqrt((t * t).sum() + eps))


def builtin_loss(name: str, huber_delta: float) -> LossFn:
    if name == "mse":
        return mse
    if name == "huber":
        return huber(huber_delta)
    if name == "ic":
        return negative_ic
    raise ValueError(f"train.loss: {name!r} is not a built-in loss ({', '.join(BUILTIN_LOSSES)})")


@torch.no_grad()
def validation_loss(loss_fn: LossFn, pred: np.ndarray, label: np.ndarray, batch: int) -> float:
    """The loss as training computes it: over batches of `batch` rows in time order, the
    batch losses averaged by rows (for `ic`, the mean within-batch correlation, negated)."""
    total, rows = 0.0, 0
    for i in range(0, len(pred), batch):
        p = torch.from_numpy(pred[i : i + batch].astype(np.float32))
        y = torch.from_numpy(label[i : i + batch].astype(np.float32))
        if len(p) < 2 and rows:  # a one-row tail carries no correlation; skip it
            continue
        total += float(loss_fn(p, y)) * len(p)
        rows += len(p)
    return total / rows if rows else float("nan")


def validation_scores(
    pred: np.ndarray, label: np.ndarray, loss_fn: LossFn, batch: int
) -> dict[str, float]:
    """Every validation metric: the spec's `loss` next to `val_loss`, IC, rank IC, hit rate."""
    return {
        **evaluate_predictions(pred, label),
        "loss": validation_loss(loss_fn, pred, label, batch),
    }
