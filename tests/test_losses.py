"""The built-in losses and the validation loss: what each computes, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.train.losses import builtin_loss, negative_ic, validation_loss, validation_scores
from trainer.train.metrics import improved, pearson


def _pair(n: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(n, generator=g)
    return 0.3 * target + torch.randn(n, generator=g), target


def test_ic_loss_is_minus_pearson_and_blind_to_scale_and_offset() -> None:
    pred, target = _pair()
    expected = -pearson(pred.numpy(), target.numpy())
    assert float(negative_ic(pred, target)) == pytest.approx(expected, abs=1e-6)
    assert float(negative_ic(100 * pred - 7, target)) == pytest.approx(expected, abs=1e-5)


def test_ic_loss_of_a_constant_prediction_is_finite_with_finite_gradients() -> None:
    pred = torch.zeros(64, requires_grad=True)
    loss = negative_ic(pred, torch.randn(64))
    loss.backward()
    assert torch.isfinite(loss) and pred.grad is not None and torch.isfinite(pred.grad).all()


def test_huber_is_half_the_square_below_delta_and_linear_above() -> None:
    loss = builtin_loss("huber", 2.0)
    pred, target = torch.tensor([0.5, 5.0]), torch.tensor([0.0, 0.0])
    small = float(loss(pred[:1], target[:1]))
    big = float(loss(pred[1:], target[1:]))
    assert small == pytest.approx(0.5 * 0.5**2)
    assert big == pytest.approx(2.0 * (5.0 - 0.5 * 2.0))


def test_validation_loss_averages_the_batches_by_rows() -> None:
    pred = np.array([1.0, 1.0, 1.0, 3.0, 3.0])
    label = np.zeros(5)
    # batches [1,1,1] and [3,3]: mse 1 and 9, weighted 3:2
    assert validation_loss(builtin_loss("mse", 1.0), pred, label, 3) == pytest.approx(
        (3 * 1 + 2 * 9) / 5
    )
    scores = validation_scores(pred, label, builtin_loss("mse", 1.0), 10**6)
    assert scores["loss"] == pytest.approx(scores["val_loss"])


def test_validation_ic_loss_skips_a_one_row_tail() -> None:
    pred, target = _pair(513)
    per_batch = validation_loss(negative_ic, pred.numpy(), target.numpy(), 512)
    assert per_batch == pytest.approx(float(negative_ic(pred[:512], target[:512])), abs=1e-6)


@pytest.mark.parametrize(
    ("metric", "value", "best", "expected"),
    [
        ("loss", -0.31, -0.30, True),
        ("loss", -0.29, -0.30, False),
        ("rank_ic", 0.2, 0.1, True),
        ("hit_rate", 0.51, 0.52, False),
    ],
)
def test_early_stopping_direction_of_every_metric(
    metric: str, value: float, best: float, expected: bool
) -> None:
    assert improved(metric, value, best, 0.0) is expected
