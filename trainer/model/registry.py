"""What `model.type` and `train.loss` name, built: the model wrapped in the runner's
normalization, and the loss the loop minimises."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.model.mlp import MLP, Linear
from trainer.model.normalized import Normalized
from trainer.spec.sections import ModelSpec, TrainSpec
from trainer.train.losses import LossFn, builtin_loss


def build_model(
    spec: ModelSpec,
    n_features: int,
    mean: np.ndarray,
    std: np.ndarray,
    seed: int,
    input_shape: tuple[int, ...] | None = None,
) -> Normalized:
    """The model the spec names, its weights drawn from `seed` alone, behind the
    normalization. `input_shape`: one sample's shape as the data path serves it (default
    `(n_features,)`)."""
    torch.manual_seed(seed)
    inner: nn.Module
    if spec.type == "mlp":
        inner = MLP(n_features, spec)
    elif spec.type == "linear":
        inner = Linear(n_features)
    else:  # pragma: no cover - the spec admits no other value
        raise ValueError(f"model.type: unknown model {spec.type!r}")
    return Normalized(inner, mean, std)


def build_loss(train: TrainSpec) -> LossFn:
    """The loss `train.loss` names."""
    return builtin_loss(train.loss, train.huber_delta)
