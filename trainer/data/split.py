"""The purged chronological split: where validation starts and where training must stop."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.spec.dates import day_bounds_ms
from trainer.spec.sections import SplitSpec


@dataclass(frozen=True)
class SplitBounds:
    """Validation holds `ts >= val_start_ms`; training holds `ts < train_end_ms`.

    `train_end_ms = val_start_ms - purge_ms`, so the label window `[ts, ts + horizon]` of
    every training row ends before the first validation row."""

    val_start_ms: int
    train_end_ms: int

    def in_train(self, ts: int) -> bool:
        return ts < self.train_end_ms

    def in_val(self, ts: int) -> bool:
        return ts >= self.val_start_ms


def split_bounds(
    split: SplitSpec, dates: tuple[str, ...], ts_min: int, ts_max: int, label_horizon_sec: int
) -> SplitBounds:
    """From the spec's rule and the dataset's time span to the two cut points.

    `validation_days=N` holds out the last N selected days; a fraction holds out that share
    of the time span `[ts_min, ts_max]`."""
    if split.validation_days is not None:
        if split.validation_days >= len(dates):
            raise ValueError(
                f"data.split.validation_days={split.validation_days} leaves no training day "
                f"out of {len(dates)}"
            )
        val_start = day_bounds_ms(sorted(dates)[-split.validation_days])[0]
    else:
        fraction = split.fraction or 0.2
        val_start = ts_min + int((1.0 - fraction) * (ts_max - ts_min + 1))
    purge_sec = label_horizon_sec if split.purge_sec is None else split.purge_sec
    return SplitBounds(val_start_ms=val_start, train_end_ms=val_start - purge_sec * 1000)
