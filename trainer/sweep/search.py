"""The search, through Optuna: the sampler and pruning rule a sweep names, each trial's
values, and a study rebuilt from `sweep.json` when another instance continues the sweep.

Choices are searched as the index of the choice (Optuna's categorical values are scalars,
a choice may be a list of widths) and stored in `sweep.json` as the values themselves. A
grid is walked in the order the space is written, fed to the study as enqueued trials, so a
continued sweep knows exactly which points are left."""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from trainer.spec.sweep import Param, SweepSpec
from trainer.store.records import SweepRecord, SweepTrial

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep logs its own lines


def distribution(param: Param) -> BaseDistribution:
    if param.choice is not None:
        return CategoricalDistribution(list(range(len(param.choice))))
    if param.integer is not None:
        return IntDistribution(param.integer[0], param.integer[1], step=param.step)
    low, high = param.uniform or param.log_uniform or (0.0, 1.0)
    return FloatDistribution(low, high, log=param.log_uniform is not None)


def to_values(sweep: SweepSpec, internal: dict[str, Any]) -> dict[str, Any]:
    """Optuna's parameters (choice indices) → the values the trial sets."""
    out = {}
    for key, param in sweep.space.items():
        value = internal[key]
        out[key] = param.choice[value] if param.choice is not None else value
    return out


def to_internal(sweep: SweepSpec, values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, param in sweep.space.items():
        value = values[key]
        out[key] = list(param.choice).index(value) if param.choice is not None else value
    return out


def _sampler(sweep: SweepSpec) -> optuna.samplers.BaseSampler:
    if sweep.sampler == "tpe":
        # Optuna's default of 10 random trials first would leave a short sweep all random.
        startup = max(2, min(10, sweep.n_trials // 3))
        return optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=sweep.seed)


def _pruner(sweep: SweepSpec) -> optuna.pruners.BasePruner:
    rule = sweep.pruning
    if rule.rule == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=rule.startup_trials, n_warmup_steps=rule.warmup_steps
        )
    if rule.rule == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=rule.min_steps or sweep.base.train.eval_every_steps,
            reduction_factor=rule.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def grid_points(sweep: SweepSpec) -> list[dict[str, Any]]:
    """Every point of a grid (as values), in the order the space is written: the last
    path varies fastest."""
    keys = list(sweep.space)
    axes = [sweep.space[k].grid() or [] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]


@dataclass
class Ask:
    """One trial handed out: its number in the sweep, its values, Optuna's handle."""

    number: int
    params: dict[str, Any]
    trial: optuna.Trial


class Search:
    """The study of one sweep: hands out trials, hears their evaluations and results."""

    def __init__(self, sweep: SweepSpec, record: SweepRecord | None = None) -> None:
        self.sweep = sweep
        self.study = optuna.create_study(
            direction="maximize" if sweep.objective.maximize else "minimize",
            sampler=_sampler(sweep),
            pruner=_pruner(sweep),
        )
        self.dists = {k: distribution(p) for k, p in sweep.space.items()}
        self._lock = threading.Lock()
        trials = record.trials if record else ()
        for t in trials:
            if t.state != "running":
                self.study.add_trial(self._frozen(t))
        self._taken = {t.number for t in trials}
        # Interrupted trials run again with their own values and number: the same job id,
        # so each resumes from its checkpoint.
        for t in trials:
            if t.state == "running":
                self._enqueue(t.params, t.number)
        if sweep.sampler == "grid":
            seen = [to_internal(sweep, t.params) for t in trials]
            for point in grid_points(sweep):
                if to_internal(sweep, point) not in seen:
                    self._enqueue(point, self._free_number())

    def _free_number(self) -> int:
        number = next(n for n in itertools.count() if n not in self._taken)
        self._taken.add(number)
        return number

    def _enqueue(self, values: dict[str, Any], number: int) -> None:
        self.study.enqueue_trial(to_internal(self.sweep, values), user_attrs={"number": number})

    def _frozen(self, t: SweepTrial) -> optuna.trial.FrozenTrial:
        state = {
            "complete": TrialState.COMPLETE,
            "pruned": TrialState.PRUNED,
            "failed": TrialState.FAIL,
        }[t.state]
        usable = t.value is not None and math.isfinite(t.value)
        if state is TrialState.COMPLETE and not usable:
            state = TrialState.FAIL
        return optuna.trial.create_trial(
            params=to_internal(self.sweep, t.params),
            distributions=self.dists,
            value=t.value if state is TrialState.COMPLETE else None,
            intermediate_values={step: v for step, v in t.intermediate if math.isfinite(v)},
            state=state,
            user_attrs={"number": t.number},
        )

    def ask(self) -> Ask:
        with self._lock:
            trial = self.study.ask()
            internal = {}
            for key, dist in self.dists.items():
                if isinstance(dist, CategoricalDistribution):
                    internal[key] = trial.suggest_categorical(key, list(dist.choices))
                elif isinstance(dist, IntDistribution):
                    internal[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step)
                elif isinstance(dist, FloatDistribution):
                    internal[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
            number = trial.user_attrs.get("number")
            if number is None:
                number = self._free_number()
            return Ask(int(number), to_values(self.sweep, internal), trial)

    def report(self, ask: Ask, step: int, value: float) -> bool:
        """An evaluation of a running trial; whether the pruning rule stops it."""
        with self._lock:
            ask.trial.report(value, step)
            return ask.trial.should_prune()

    def tell(self, ask: Ask, state: str, value: float | None) -> None:
        with self._lock:
            if state == "pruned":
                self.study.tell(ask.trial, state=TrialState.PRUNED)
            elif state == "complete" and value is not None and math.isfinite(value):
                self.study.tell(ask.trial, value)
            else:
                self.study.tell(ask.trial, state=TrialState.FAIL)
