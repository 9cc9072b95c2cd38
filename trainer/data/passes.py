"""Whole-split passes outside the training loop: normalization statistics of the training
rows (warming the cache on the way) and the validation split as arrays for evaluation."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from trainer.data.blocks import BlockSpec
from trainer.data.cache import BlockCache
from trainer.data.order import split_units
from trainer.data.plan import DatasetPlan
from trainer.data.prefetch import BlockReader, PartitionFiles
from trainer.store.base import ObjectStore

Split = Literal["train", "val"]


def split_spec(plan: DatasetPlan, split: Split, with_ts: bool = False) -> BlockSpec:
    """The block spec of a split: its purged window, and timestamps kept for validation."""
    b = plan.bounds
    return BlockSpec(
        features=plan.features,
        label=plan.label,
        timestamp=plan.timestamp,
        lo=b.val_start_ms if split == "val" else None,
        hi=b.train_end_ms if split == "train" else None,
        gap=(b.train_end_ms, b.val_start_ms),
        keep_ts=with_ts or split == "val",
    )


def _reader(
    plan: DatasetPlan,
    store: ObjectStore,
    spec: BlockSpec,
    cache: BlockCache | None,
    policy: str,
    files: PartitionFiles | None,
) -> BlockReader:
    device = cache.device if cache is not None else torch.device("cpu")
    return BlockReader(
        plan,
        store,
        spec,
        device=device,
        files_in_flight=3,
        ahead=4,
        cache=cache,
        non_finite=policy,
        files=files,
    )


def compute_feature_stats(
    plan: DatasetPlan,
    store: ObjectStore,
    *,
    cache: BlockCache | None = None,
    non_finite: Literal["drop", "fail"] = "drop",
    max_rows: int | None = None,
    min_std: float = 1e-6,
    files: PartitionFiles | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-feature mean and standard deviation of the training rows (after the purge and the
    non-finite filter), accumulated in float64 by merging per-block moments (Chan et al.), so
    large offsets do not cancel. Reading goes through `cache`, which it leaves warm for
    training. Returns `(mean, std floored at min_std, rows)`."""
    spec = split_spec(plan, "train")
    reader = _reader(plan, store, spec, cache, non_finite, files)
    nf = len(plan.features)
    rows, mean, m2 = 0, np.zeros(nf), np.zeros(nf)
    try:
        for _, block, _ in reader.stream(split_units(plan, spec, time_order=False)):
            take = block.rows if max_rows is None else min(block.rows, max_rows - rows)
            if take <= 0:
                break
            b_mean, b_m2 = _moments(block.x[:take])
            reader.release(block)  # the moments are computed: its memory may serve the next
            total = rows + take
            delta = b_mean - mean
            mean += delta * (take / total)
            m2 += b_m2 + delta**2 * (rows * take / total)
            rows = total
    finally:
        reader.close()
    std = np.maximum(np.sqrt(m2 / max(rows, 1)), min_std)
    return mean, std, rows


def _moments(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sum of squared deviations per column, in float64: on the GPU with torch,
    on the CPU with numpy (single-threaded, so it does not fight the reading threads)."""
    if x.is_cuda:
        xd = x.double()
        mean = xd.mean(0)
        return mean.cpu().numpy(), ((xd - mean) ** 2).sum(0).cpu().numpy()
    xn = x.numpy().astype(np.float64)
    mean_n = xn.mean(axis=0)
    return mean_n, ((xn - mean_n) ** 2).sum(axis=0)


def read_split_arrays(
    plan: DatasetPlan,
    store: ObjectStore,
    split: Split = "val",
    *,
    cache: BlockCache | None = None,
    non_finite: Literal["drop", "fail"] = "drop",
    max_rows: int | None = None,
    files: PartitionFiles | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole (small) split as numpy `(X [N, F] float32, y [N] float32, ts [N] int64)`,
    sorted by time (stable), for evaluation and for exporting predictions."""
    spec = split_spec(plan, split, with_ts=True)
    reader = _reader(plan, store, spec, cache, non_finite, files)
    xs, ys, tss, rows = [], [], [], 0
    try:
        for _, block, _ in reader.stream(split_units(plan, spec, time_order=True)):
            take = block.rows if max_rows is None else min(block.rows, max_rows - rows)
            if take <= 0:
                break
            # copies: the blocks' memory may be reused once this pass lets go of them
            xs.append(block.x[:take].cpu().numpy().copy())
            ys.append(block.y[:take].cpu().numpy().copy())
            served_ts = block.ts_served
            tss.append(served_ts[:take].copy() if served_ts is not None else np.empty(0, np.int64))
            reader.release(block)
            rows += take
    finally:
        reader.close()
    if not xs:
        nf = len(plan.features)
        return np.empty((0, nf), np.float32), np.empty(0, np.float32), np.empty(0, np.int64)
    ts = np.concatenate(tss)
    order = np.argsort(ts, kind="stable")
    return np.concatenate(xs)[order], np.concatenate(ys)[order], ts[order]
