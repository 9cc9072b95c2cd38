"""The built-in models: `mlp`, a feed-forward network, and `linear`, the baseline it has to beat.

Both take standardized features (the runner's `Normalized` wrapper comes first) and return
one prediction per row, `[batch]`."""

from __future__ import annotations

import torch
from torch import nn

from trainer.spec.sections import ModelSpec

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class MLP(nn.Module):
    """Hidden layers of `spec.hidden` widths with the spec's activation and dropout, then a
    linear head."""

    def __init__(self, n_features: int, spec: ModelSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[spec.activation]()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class Linear(nn.Module):
    """Ordinary linear regression on the standardized features."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.head = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).squeeze(-1)
