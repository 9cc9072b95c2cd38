"""The built-in sequence model, `tcn`: causal temporal convolutions over a window of rows, then
a linear head on the last step.

It takes standardized windows `[batch, L, features]` (the runner's `Normalized` wrapper comes
first), oldest row first, and returns one prediction per window, `[batch]`."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from trainer.model.mlp import ACTIVATIONS
from trainer.spec.sections import ModelSpec


def levels_for(window: int, kernel_size: int) -> int:
    """Layers whose dilations 1, 2, 4, ... give a receptive field of at least `window` rows:
    `1 + (k - 1)(2^n - 1) >= window`."""
    return max(1, math.ceil(math.log2((window - 1) / (kernel_size - 1) + 1)))


class CausalBlock(nn.Module):
    """`x + dropout(act(conv(x)))`, the convolution dilated and padded on the left only, so
    that step t sees steps t, t - d, t - 2d, ... and never a later one."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, spec: ModelSpec) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.act = ACTIVATIONS[spec.activation]()
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.act(self.conv(F.pad(x, (self.pad, 0)))))


class TCN(nn.Module):
    """A 1x1 convolution to `spec.channels`, causal blocks with doubling dilations until the
    receptive field covers the window, and a linear head on the last step's channels."""

    def __init__(self, n_features: int, window: int, spec: ModelSpec) -> None:
        super().__init__()
        self.inp = nn.Conv1d(n_features, spec.channels, 1)
        self.blocks = nn.Sequential(
            *(
                CausalBlock(spec.channels, spec.kernel_size, 2**i, spec)
                for i in range(levels_for(window, spec.kernel_size))
            )
        )
        self.head = nn.Linear(spec.channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x.transpose(1, 2)))  # [batch, channels, L]
        return self.head(h[:, :, -1]).squeeze(-1)
