"""Permutation importance: how much the validation IC and loss suffer when one feature's column
is shuffled across rows, breaking its link to the label and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trainer.store.records import FeatureEffect, FeatureImportance
from trainer.train.metrics import evaluate_predictions

REPEATS = 3
SEED = 0


def permutation_importance(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    features: Sequence[str],
    repeats: int = REPEATS,
    seed: int = SEED,
) -> FeatureImportance:
    """Each feature (the last axis of `x`) shuffled over the rows `repeats` times with a fixed
    seed; the mean change of IC and loss against the unshuffled rows. `predict` maps rows of
    raw features to one prediction each."""
    if x.shape[-1] != len(features):
        raise ValueError(f"{x.shape[-1]} feature columns but {len(features)} feature names")
    base = evaluate_predictions(predict(x), y)
    rng = np.random.default_rng(seed)
    effects = []
    shuffled = x.copy()  # one copy: each feature's column is shuffled in it, then put back
    for j, name in enumerate(features):
        ic_drops, loss_rises = [], []
        column = x[..., j]
        for _ in range(repeats):
            shuffled[..., j] = np.take(column, rng.permutation(len(x)), axis=0)
            scored = evaluate_predictions(predict(shuffled), y)
            ic_drops.append(base["ic"] - scored["ic"])
            loss_rises.append(scored["val_loss"] - base["val_loss"])
        shuffled[..., j] = column
        effects.append(
            FeatureEffect(
                feature=name,
                ic_drop=float(np.mean(ic_drops)),
                loss_increase=float(np.mean(loss_rises)),
            )
        )
    return FeatureImportance(
        rows=len(y),
        repeats=repeats,
        seed=seed,
        ic=base["ic"],
        val_loss=base["val_loss"],
        features=tuple(effects),
    )
