"""`sweep.json` as the sweep runs: rewritten whenever a trial starts or ends, committed last.

The record is the sweep's state: a replacement instance reads it to know which trials are
done (skipped), which were interrupted (run again under the same job id, so they resume
from their checkpoints) and how many are left. `state: committed` is written once every
trial is accounted for, after the last trial's manifest."""

from __future__ import annotations

import math
import threading
from typing import Any

from trainer import __version__
from trainer.errors import PreconditionFailed
from trainer.spec.sweep import SweepSpec, dump_sweep
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths, Layout
from trainer.store.records import (
    SweepRecord,
    SweepTrial,
    TrialState,
    read_record,
    utc_now,
    write_record,
)


def sweep_paths(sweep: SweepSpec) -> JobPaths:
    return Layout.of(sweep.base.storage).job(sweep.sweep_id)


def read_sweep(store: ObjectStore, paths: JobPaths) -> SweepRecord | None:
    return read_record(store, paths.sweep, SweepRecord)


def keep_spec(sweep: SweepSpec, store: ObjectStore) -> None:
    """`sweep.yaml` beside `sweep.json`; an explicit sweep id another sweep holds is refused."""
    paths = sweep_paths(sweep)
    text = dump_sweep(sweep).encode()
    try:
        store.put(paths.sweep_spec, text, if_absent=True)
    except PreconditionFailed:
        if store.get(paths.sweep_spec) != text:
            raise PreconditionFailed(
                f"sweep id {sweep.sweep_id} is taken by another sweep "
                f"({store.uri(paths.sweep_spec)}); drop `sweep.id` or give a new one"
            ) from None


class SweepBook:
    """The sweep's record in memory and in the store; safe for trials ending side by side."""

    def __init__(self, sweep: SweepSpec, store: ObjectStore, record: SweepRecord | None) -> None:
        self.sweep, self.store, self.paths = sweep, store, sweep_paths(sweep)
        self._lock = threading.Lock()
        self.record = record or SweepRecord(
            sweep_id=sweep.sweep_id,
            name=sweep.sweep.name,
            sampler=sweep.sampler,
            seed=sweep.seed,
            metric=sweep.objective.metric,
            maximize=sweep.objective.maximize,
            pruning=sweep.pruning.rule,
            space={
                k: p.model_dump(mode="json", exclude_defaults=True) for k, p in sweep.space.items()
            },
            trials_planned=sweep.n_trials,
            started_at=utc_now(),
            code_version=__version__,
        )

    @property
    def settled(self) -> int:
        """Trials that ended, whichever way."""
        return sum(1 for t in self.record.trials if t.state != "running")

    def started(self, number: int, job_id: str, params: dict[str, Any]) -> None:
        trial = SweepTrial(
            number=number, job_id=job_id, params=params, state="running", started_at=utc_now()
        )
        with self._lock:
            self._put(trial)

    def evaluated(self, number: int, step: int, value: float) -> None:
        """An evaluation point of a running trial (written when the trial ends)."""
        with self._lock:
            trial = self._get(number)
            if trial is not None:
                seen = tuple(p for p in trial.intermediate if p[0] != step)
                self._put(trial.model_copy(update={"intermediate": (*seen, (step, value))}), False)

    def ended(self, number: int, state: TrialState, **fields: Any) -> SweepTrial:
        with self._lock:
            trial = self._get(number)
            if trial is None:
                raise KeyError(f"trial {number} was never started")
            done = trial.model_copy(update={"state": state, "ended_at": utc_now(), **fields})
            self._put(done)
            return done

    def read_data(self, times: int) -> None:
        with self._lock:
            count = self.record.data_reads + times
            self.record = self.record.model_copy(update={"data_reads": count})

    def commit(self) -> SweepRecord:
        """Every trial is accounted for: the best one, and `state: committed`, last."""
        with self._lock:
            now = utc_now()
            self.record = self.record.model_copy(
                update={"state": "committed", "committed_at": now, "updated_at": now}
            )
            self._write()
            return self.record

    # -- inside the lock ------------------------------------------------------------------
    def _get(self, number: int) -> SweepTrial | None:
        return next((t for t in self.record.trials if t.number == number), None)

    def _put(self, trial: SweepTrial, write: bool = True) -> None:
        others = [t for t in self.record.trials if t.number != trial.number]
        trials = tuple(sorted([*others, trial], key=lambda t: t.number))
        best = _best(trials, self.record.maximize)
        self.record = self.record.model_copy(
            update={"trials": trials, "best": best, "updated_at": utc_now()}
        )
        if write:
            self._write()

    def _write(self) -> None:
        write_record(self.store, self.paths.sweep, self.record)


def _best(trials: tuple[SweepTrial, ...], maximize: bool) -> int | None:
    """The complete trial with the best objective (as in Optuna, a pruned trial was judged a
    loser part-way and does not compete)."""
    scored = [
        t
        for t in trials
        if t.state == "complete" and t.value is not None and math.isfinite(t.value)
    ]
    if not scored:
        return None
    pick = max if maximize else min
    return pick(scored, key=lambda t: t.value or 0.0).number
