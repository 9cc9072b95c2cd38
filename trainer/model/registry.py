"""What `model.type` and `train.loss` name, built: the model wrapped in the runner's
normalization, and the loss the loop minimises."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from trainer.model.mlp import MLP, Linear
from trainer.model.normalized import Normalized
from trainer.model.tcn import TCN
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
    shape = input_shape or (n_features,)
    inner: nn.Module
    if spec.type == "mlp":
        inner = MLP(math.prod(shape), spec)
    elif spec.type == "linear":
        inner = Linear(math.prod(shape))
    elif spec.type == "tcn" and len(shape) == 2:
        inner = TCN(n_features, shape[0], spec)
    else:  # pragma: no cover - the spec admits no other value
        raise ValueError(f"model.type: {spec.type!r} cannot take samples of shape {shape}")
    return Normalized(inner, mean, std)


def build_loss(train: TrainSpec) -> LossFn:
    """The loss `train.loss` names."""
    return builtin_loss(train.loss, train.huber_delta)
