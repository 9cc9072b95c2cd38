"""The rows a job's passes covered, summed over the ranks and checked against each other
before anything is committed: a pass that skipped rows fails the job, it never commits."""

from __future__ import annotations

import torch

from trainer.errors import DataError
from trainer.job.prepare import Prepared
from trainer.store.records import PassRows, RowCounts
from trainer.train.distributed import Ranks, all_sum

_FIELDS = ("row_groups", "planned", "read", "outside", "dropped", "short", "used")


def row_counts(
    job: Prepared, rows_seen_all: int, resumed: bool, ranks: Ranks, device: torch.device
) -> RowCounts:
    """Every pass's counts, the training epoch's summed over the ranks (a collective: every
    rank calls it). Raises DataError when they contradict each other."""
    loader = job.loader
    mine = (loader.first_epoch or loader.tally).record()
    train = PassRows(**{f: all_sum(getattr(mine, f), ranks, device) for f in _FIELDS})
    whole = all_sum(int(loader.first_epoch is not None), ranks, device) == ranks.world_size
    epochs = loader.epochs_read
    stats = job.stats_rows or PassRows(**dict.fromkeys(_FIELDS, 0))
    counts = RowCounts(statistics=stats, validation=job.val_rows, train=train, epochs_read=epochs)
    if loader.max_rows is None:  # a dry run reads a few rows of each pass: nothing to compare
        split_rows = sum(u.rows for u in loader.units)
        _check(counts, job, rows_seen_all, resumed, whole, split_rows)
    return counts


def _check(
    counts: RowCounts,
    job: Prepared,
    rows_seen: int,
    resumed: bool,
    whole: bool,
    split_rows: int,
) -> None:
    """`whole`: every rank read a whole epoch from its beginning, which `counts.train` is."""
    problems = []
    val, train = counts.validation, counts.train
    if val.used != len(job.val.y):
        problems.append(f"validation: {val.used} rows counted, {len(job.val.y)} evaluated on")
    if whole and (train.planned, train.read) != (split_rows, split_rows):
        problems.append(
            f"training: an epoch planned {train.planned} and read {train.read} rows of the "
            f"split's {split_rows}"
        )
    if job.stats_whole and whole and job.loader.window == 1 and counts.statistics != train:
        problems.append(
            f"the feature statistics read every training row group ({counts.statistics}) "
            f"but training counted other rows ({train})"
        )
    if whole and not resumed:
        # an epoch counts as read once its last buffer is: training may stop inside that
        low, high = (counts.epochs_read - 1) * train.used, (counts.epochs_read + 1) * train.used
        if not low <= rows_seen <= high:
            problems.append(
                f"training: {rows_seen} rows trained on in {counts.epochs_read} whole epoch(s) "
                f"of {train.used} rows"
            )
    if problems:
        raise DataError("the job's passes counted rows that do not agree", problems)
