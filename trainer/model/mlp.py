"""The built-in MLP, with the input normalization inside, and `build_model`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.spec.sections import ModelSpec

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class MLP(nn.Module):
    """Standardize raw features with the training set's statistics, then a feed-forward net.

    The statistics are buffers, so they travel inside the exported `model.bin` and the
    model maps raw features, in the documented column order, straight to predictions."""

    def __init__(self, n_features: int, spec: ModelSpec, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        if mean.shape != (n_features,) or std.shape != (n_features,):
            raise ValueError(f"normalization stats must have shape ({n_features},)")
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("inv_std", torch.as_tensor(1.0 / std, dtype=torch.float32).clone())
        layers: list[nn.Module] = []
        width = n_features
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[spec.activation]()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    mean: torch.Tensor
    inv_std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) * self.inv_std).squeeze(-1)


def build_model(
    spec: ModelSpec, n_features: int, mean: np.ndarray, std: np.ndarray, seed: int
) -> nn.Module:
    """The model the spec names, its weights drawn from `seed` alone."""
    torch.manual_seed(seed)
    if spec.type == "mlp":
        return MLP(n_features, spec, mean, std)
    raise ValueError(f"model.type: unknown model {spec.type!r}")  # pragma: no cover
