"""The built-in models: `mlp`, a feed-forward network, and `linear`, the baseline it has to beat.

Both take standardized features (the runner's `Normalized` wrapper comes first), one row
`[batch, F]` or a window of rows `[batch, L, F]` (taken side by side, as `L * F` inputs), and
return one prediction per sample, `[batch]`."""

from __future__ import annotations

import torch
from torch import nn

from trainer.spec.sections import ModelSpec

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class MLP(nn.Module):
    """Hidden layers of `spec.hidden` widths with the spec's activation and dropout, then a
    linear head."""

    def __init__(self, n_inputs: int, spec: ModelSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[spec.activation]()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(-1)  # a window's rows side by side


class Linear(nn.Module):
    """Ordinary linear regression on the standardized features."""

    def __init__(self, n_inputs: int) -> None:
        super().__init__()
        self.head = nn.Linear(n_inputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1)).squeeze(-1)
