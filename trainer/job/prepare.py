"""The job's first step: everything training needs, read and built before the first step.

Given the pre-flight plan: the feature statistics of the training rows, the validation rows, the
model with the normalization inside, the streaming loader over a warm cache, and the
checkpointer with whatever it restored."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from trainer.data.blocks import Unit
from trainer.data.cache import BlockCache, cache_budget
from trainer.data.loader import StreamingLoader
from trainer.data.passes import (
    FeatureStats,
    SplitRows,
    compute_feature_stats,
    read_split,
    stats_units,
)
from trainer.data.plan import DatasetPlan
from trainer.data.prefetch import PartitionFiles
from trainer.data.tally import Tally
from trainer.errors import DataError
from trainer.job.identity import Resolved
from trainer.model.code import StagedCode
from trainer.model.normalized import Normalized
from trainer.model.registry import build_loss, build_model
from trainer.spec import JobSpec
from trainer.spec.sections import TrainSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout
from trainer.store.records import PassRows
from trainer.train.checkpoint import Checkpointer, Found
from trainer.train.distributed import Ranks
from trainer.train.loop import Restored, step_budget
from trainer.train.losses import LossFn

log = logging.getLogger("quantlab.job")

DRY_RUN_ROWS = 4_096
DRY_RUN_STEPS = 5


@dataclass(frozen=True)
class DataPart:
    """What a job reads before its first step, all of it shareable by jobs with the same
    data section."""

    files: PartitionFiles
    cache: BlockCache | None
    stats: FeatureStats
    val: SplitRows
    """The validation samples, in time order."""
    val_rows: PassRows
    """What the validation pass read."""


class SharedData(Protocol):
    """Data read once for several jobs (see `trainer.sweep.shared`)."""

    def resolve(self, spec: JobSpec) -> Resolved: ...

    def data(
        self, spec: JobSpec, plan: DatasetPlan, device: torch.device, ranks: Ranks, dry_run: bool
    ) -> DataPart: ...


@dataclass(frozen=True)
class Prepared:
    """What `fit` and `write_artifacts` take."""

    train: TrainSpec
    """The spec's training section, cut down for a dry run."""
    plan: DatasetPlan
    val: SplitRows
    """The validation samples, in time order."""
    n_train: int
    stats_rows: PassRows | None
    """What the feature statistics' sample read."""
    val_rows: PassRows
    """What the validation pass read."""
    stats_whole: bool
    """The statistics read every training row group: their counts are the training split's."""
    model: Normalized
    """On the device, behind the normalization, not yet wrapped for DDP."""
    loss: LossFn
    """What `train.loss` names."""
    loader: StreamingLoader
    checkpointer: Checkpointer | None
    """None for a dry run, which saves nothing."""
    restored: Restored | None
    max_steps: int


def prepare(
    spec: JobSpec,
    store: ObjectStore,
    plan: DatasetPlan,
    device: torch.device,
    ranks: Ranks,
    dry_run: bool,
    code: StagedCode | None = None,
    shared: SharedData | None = None,
) -> Prepared:
    """`plan` is the pre-flight the spec was resolved with (`job.identity.resolve`);
    `shared` holds the data read for earlier jobs with the same data section (a sweep's
    trials), which this one then reads no byte of again."""
    train = spec.train
    if dry_run:
        # a few steps over one row group at a time: each step's epoch reads one, not a buffer
        update = {"max_steps": DRY_RUN_STEPS, "eval_every_steps": 10**9}
        train = train.model_copy(update={**update, "shuffle_buffer_row_groups": 1})
    limit = DRY_RUN_ROWS if dry_run else None
    window = spec.data.window

    if shared is not None:
        data = shared.data(spec, plan, device, ranks, dry_run)
        loader = _train_loader(
            spec, train, plan, store, device, ranks, limit, data.files, data.cache
        )
        checkpointer, found = _checkpoint(spec, store, train, loader, ranks, dry_run)
        if found is not None:
            found.position(loader)
    else:
        files = PartitionFiles(plan, store)  # every reader below uses the pre-flight's footers
        cache = _cache(spec, plan, device, ranks, dry_run)
        loader = _train_loader(spec, train, plan, store, device, ranks, limit, files, cache)
        checkpointer, found = _checkpoint(spec, store, train, loader, ranks, dry_run)
        # The first buffer arrives while the statistics and the validation rows are read
        # (but for the row groups the statistics put in the cache).
        # The statistics' sample takes the first buffer's row groups where it can, so that
        # they are read once, into the cache, and the epoch takes them from there. It is
        # chosen before the loader moves to a checkpoint's position, so that a resumed job
        # has the statistics of the run it continues; its reads ahead start where it resumes.
        first = loader.first_buffer() if _stats_cache(cache, ranks) is not None else []
        picked = stats_units(plan, loader.units, limit, first=first) if first else None
        if found is not None:
            found.position(loader)
        loader.read_ahead(skip=picked or ())
        try:
            data = read_data(
                spec, store, plan, device, ranks, dry_run, files=files, cache=cache, sample=picked
            )
        except BaseException:
            loader.close()
            raise
    stats, val = data.stats, data.val
    val_rows = data.val_rows
    # Every row group read: the count is exact; sampled: the footers' (pro rata at the cut).
    whole = stats.row_groups == stats.of_row_groups and limit is None
    n_train = stats.rows if whole else plan.estimates["train_rows"]
    if window > 1:  # a partition's first rows have no full window (the budget is an estimate)
        n_train = max(n_train - (window - 1) * _train_partitions(plan), 1)
    log.info("samples: train %s%d, validation %d", "" if whole else "~", n_train, len(val))

    sample = (len(plan.features),) if window == 1 else (window, len(plan.features))
    model = build_model(
        spec.model,
        len(plan.features),
        stats.mean,
        stats.std,
        train.seed,
        code=code,
        input_shape=sample,
    ).to(device)
    restored = checkpointer.restore(model, found) if checkpointer is not None else None
    steps_per_epoch = math.ceil(n_train / (train.batch_size * ranks.world_size))
    return Prepared(
        train=train,
        plan=plan,
        val=val,
        n_train=n_train,
        stats_rows=stats.counts,
        val_rows=val_rows,
        stats_whole=whole,
        model=model,
        loss=build_loss(train, code),
        loader=loader,
        checkpointer=checkpointer,
        restored=restored,
        max_steps=step_budget(train, steps_per_epoch),
    )


def _checkpoint(
    spec: JobSpec,
    store: ObjectStore,
    train: TrainSpec,
    loader: StreamingLoader,
    ranks: Ranks,
    dry_run: bool,
) -> tuple[Checkpointer | None, Found | None]:
    """The job's checkpointer and the checkpoint it resumes from; neither for a dry run,
    which saves nothing and resumes nothing."""
    if dry_run:
        return None, None
    checkpointer = Checkpointer(
        store,
        Layout.of(spec.storage).job(spec.job_id),
        train.checkpoint,
        loader,
        epoch_boundaries_only=ranks.distributed,
    )
    return checkpointer, checkpointer.find()


def _train_loader(
    spec: JobSpec,
    train: TrainSpec,
    plan: DatasetPlan,
    store: ObjectStore,
    device: torch.device,
    ranks: Ranks,
    limit: int | None,
    files: PartitionFiles,
    cache: BlockCache | None,
) -> StreamingLoader:
    return StreamingLoader(
        plan,
        store,
        split="train",
        batch_size=train.batch_size,
        seed=train.seed,
        rank=ranks.rank,
        world_size=ranks.world_size,
        device=device,
        shuffle_buffer_row_groups=train.shuffle_buffer_row_groups,
        non_finite=spec.data.non_finite,
        max_rows=limit,
        cache=cache,
        files=files,
        window=spec.data.window,
    )


def read_data(
    spec: JobSpec,
    store: ObjectStore,
    plan: DatasetPlan,
    device: torch.device,
    ranks: Ranks,
    dry_run: bool,
    *,
    files: PartitionFiles | None = None,
    cache: BlockCache | None = None,
    sample: Sequence[Unit] | None = None,
) -> DataPart:
    """The reads before the first step: the open files, the block cache, the feature
    statistics of the training rows (warming the cache) and the validation samples.
    `files` and `cache`: the job's own, opened already (both or neither); `sample`: the
    row groups the statistics read (`passes.stats_units`), chosen by a caller that reads
    ahead around them; None: the statistics choose."""
    limit = DRY_RUN_ROWS if dry_run else None
    window = spec.data.window
    log.info(
        "dataset: %d partitions, %d rows, %.1f MB, %d features",
        len(plan.partitions),
        plan.rows,
        plan.bytes / 1e6,
        len(plan.features),
    )
    if files is None:
        files = PartitionFiles(plan, store)  # every reader below uses the pre-flight's footers
        cache = _cache(spec, plan, device, ranks, dry_run)
    stats = compute_feature_stats(
        plan,
        store,
        cache=_stats_cache(cache, ranks),
        non_finite=spec.data.non_finite,
        max_rows=limit,
        files=files,
        window=window,
        sample=sample,
    )
    val_tally = Tally("validation")
    val = read_split(
        plan,
        store,
        "val",
        window=window,
        non_finite=spec.data.non_finite,
        max_rows=limit,
        files=files,
        tally=val_tally,
    )
    if stats.rows == 0 or len(val) == 0:
        raise DataError(
            "nothing to train on",
            [
                f"{stats.rows} training rows (in {stats.row_groups} of {stats.of_row_groups} "
                f"row groups read) and {len(val)} validation samples after the split, the "
                "purge, non-finite filtering"
                + (f" and windows of {window} rows" if window > 1 else "")
            ],
        )
    log.info(
        "feature statistics from %d rows in %d of %d row groups; standard error at most "
        "%.4f std for a mean, %.2f%% for a std",
        stats.rows,
        stats.row_groups,
        stats.of_row_groups,
        stats.mean_error,
        100 * stats.std_error,
    )
    return DataPart(files, cache, stats, val, val_tally.record())


def _stats_cache(cache: BlockCache | None, ranks: Ranks) -> BlockCache | None:
    """Where the statistics pass keeps the blocks it reads: the job's cache, but for several
    ranks, where the sample's blocks are mostly other ranks' to serve."""
    return None if ranks.distributed else cache


def _train_partitions(plan: DatasetPlan) -> int:
    """Partitions holding training rows, by their timestamp range."""
    return sum(1 for p in plan.partitions if p.meta.ts_min < plan.bounds.train_end_ms)


def _cache(
    spec: JobSpec, plan: DatasetPlan, device: torch.device, ranks: Ranks, dry_run: bool
) -> BlockCache | None:
    """The block cache on the training device, sized from `data.cache_gb` or free memory."""
    if dry_run:
        return None  # one pass over a few row groups: nothing is read twice
    budget = cache_budget(device, spec.data.cache_gb, ranks.local_world_size)
    if budget == 0:
        log.info("block cache: off")
        return None
    # what this rank's shard decodes to: features and label, float32
    shard = plan.estimates["train_rows"] * (len(plan.features) + 1) * 4 / ranks.world_size
    log.info(
        "block cache: %.2f GB on %s (%s); this rank's training rows decode to %.2f GB, so "
        "%.0f%% of each later epoch is served from it",
        budget / 1e9,
        device,
        "data.cache_gb" if spec.data.cache_gb is not None else "sized from free memory",
        shard / 1e9,
        min(100.0, 100 * budget / max(shard, 1)),
    )
    return BlockCache(budget, device=device)
