"""The recount a committed job is held to: split bounds and the rows of each split, from the
rows as written, with plain numpy and pyarrow."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.damaged_data import FEATURES, Dataset, day_ms


@dataclass(frozen=True)
class Recount:
    val_start_ms: int
    train_end_ms: int
    train_used: int
    train_dropped: int
    train_planned: int
    val_used: int
    val_dropped: int
    val_planned: int
    val_labels: np.ndarray


def recount(ds: Dataset, spec: dict[str, Any]) -> Recount:
    """The split bounds and the rows of each split, from the rows as written: the bounds from
    the spec's rule and the rows' own time span, the purge from the spec or meta.json."""
    d = spec["data"]
    features = d.get("features") or list(FEATURES)
    split = d.get("split", {})
    tables = [(p, p.table()) for p in ds.parts.values()]
    all_ts = np.concatenate([t.column("ts").to_numpy() for _, t in tables if t.num_rows])
    ts_min, ts_max = int(all_ts.min()), int(all_ts.max())
    if split.get("validation_days"):
        val_start = day_ms(sorted(ds.dates)[-split["validation_days"]])[0]
    else:
        fraction = split.get("validation_fraction") or 0.2
        val_start = ts_min + int((1.0 - fraction) * (ts_max - ts_min + 1))
    purge = split.get("purge_sec")
    purge = ds.horizon if purge is None else purge
    train_end = val_start - purge * 1000
    n = dict.fromkeys(("tu", "td", "tp", "vu", "vd", "vp"), 0)
    labels = []
    for part, _ in tables:
        for g in part.groups:
            if not g.num_rows:
                continue
            ts = g.column("ts").to_numpy()
            values = np.column_stack(
                [
                    g.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                    for c in (*features, "label")
                ]
            )
            finite = np.isfinite(values).all(axis=1)
            train, val = ts < train_end, ts >= val_start
            n["tu"] += int((train & finite).sum())
            n["td"] += int((train & ~finite).sum())
            n["tp"] += g.num_rows if train.any() else 0
            n["vu"] += int((val & finite).sum())
            n["vd"] += int((val & ~finite).sum())
            n["vp"] += g.num_rows if val.any() else 0
            labels.append(values[val & finite, -1])
    return Recount(
        val_start,
        train_end,
        n["tu"],
        n["td"],
        n["tp"],
        n["vu"],
        n["vd"],
        n["vp"],
        np.sort(np.concatenate(labels)),
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
