"""Learning-rate schedule: linear warm-up, then cosine, linear or constant decay."""

from __future__ import annotations

import math

from trainer.spec.sections import TrainSpec


def lr_at(step: int, total_steps: int, train: TrainSpec) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if train.warmup_steps > 0 and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return train.lr
    decay_steps = max(total_steps - train.warmup_steps, 1)
    progress = min(max(step - train.warmup_steps, 0) / decay_steps, 1.0)
    if train.schedule == "linear":
        return train.lr * (1.0 - progress)
    return train.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
