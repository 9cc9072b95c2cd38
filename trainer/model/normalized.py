"""The runner's wrapper around every model: the training set's normalization, then the model.

Models, built-in or the researcher's own, see standardized features and never handle
statistics. The statistics are buffers of the wrapper, so the exported `model.bin` maps raw
features, in the documented column order, straight to predictions."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Normalized(nn.Module):
    """`model((x - mean) / std)`, with `mean` and `std` of the training rows per feature."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, model: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"normalization stats must be two [features] vectors: {mean.shape}")
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("inv_std", torch.as_tensor(1.0 / std, dtype=torch.float32).clone())
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) * self.inv_std)
