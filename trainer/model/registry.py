"""What `model.type` and `train.loss` name, built: the model wrapped in the runner's
normalization, and the loss the loop minimises. Built-ins by name, the researcher's own by
entry point from the staged code."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from trainer.model.code import StagedCode
from trainer.model.entry import load_entry, problem_at, user_error
from trainer.model.mlp import MLP, Linear
from trainer.model.normalized import Normalized
from trainer.model.tcn import TCN
from trainer.spec.sections import ModelSpec, TrainSpec, is_entry_point
from trainer.train.losses import LossFn, builtin_loss


def build_model(
    spec: ModelSpec,
    n_features: int,
    mean: np.ndarray,
    std: np.ndarray,
    seed: int,
    *,
    code: StagedCode | None = None,
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
    elif is_entry_point(spec.type):
        inner = _from_factory(spec, n_features, shape, _need(code))
    else:  # pragma: no cover - the spec admits no other value
        raise ValueError(f"model.type: {spec.type!r} cannot take samples of shape {shape}")
    return Normalized(inner, mean, std)


def _from_factory(
    spec: ModelSpec, n_features: int, input_shape: tuple[int, ...], code: StagedCode
) -> nn.Module:
    """Call the researcher's factory: `n_features` always, `input_shape` if it takes it,
    `model.params` as keyword arguments."""
    factory = cast(Callable[..., Any], load_entry(spec.type, "model.type", code))
    kwargs: dict[str, Any] = dict(spec.params)
    offered = {"n_features": n_features, "input_shape": tuple(input_shape)}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: offer everything
        kwargs |= offered
    else:
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs |= {k: v for k, v in offered.items() if takes_any or k in params}
        if "n_features" not in kwargs:
            raise problem_at(
                "model.type", (factory,), code, f"{spec.type} must take `n_features` (an int)"
            )
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise user_error("model.type", exc, code, at=(factory,)) from None
    if not isinstance(model, nn.Module):
        raise problem_at(
            "model.type",
            (factory,),
            code,
            f"{spec.type} returned a {type(model).__name__}, not a torch.nn.Module",
        )
    return model


def build_loss(train: TrainSpec, code: StagedCode | None = None) -> LossFn:
    """The loss `train.loss` names."""
    if not is_entry_point(train.loss):
        return builtin_loss(train.loss, train.huber_delta)
    staged = _need(code)
    return cast(LossFn, load_entry(train.loss, "train.loss", staged))


def _need(code: StagedCode | None) -> StagedCode:
    if code is None:  # the spec's own validation makes this a bug, not a user error
        raise ValueError("an entry point needs the job's staged code")
    return code
