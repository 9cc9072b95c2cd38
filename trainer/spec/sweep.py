"""The sweep spec: a base JobSpec, a search space over its fields, and how to search it.

A sweep is many jobs: each trial is the base spec with the trial's values set on the paths
the space names (the paths `--set` takes), validated as any JobSpec and run as an ordinary
job with its own derived id. Problems are reported at once, each under its YAML path; a
value of the space that no JobSpec accepts is refused here, before anything runs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from trainer.errors import SpecError
from trainer.spec.load import (
    load_spec,
    parse_override,
    read_spec_text,
    set_path,
    spec_from_dict,
    yaml_mapping,
)
from trainer.spec.messages import describe_errors
from trainer.spec.sections import JOB_ID_RE, JobSpec, Section, UnresolvedSpec
from trainer.spec.yamltext import write_yaml

FIXED_SECTIONS = ("job", "resources", "limits", "storage")
"""Sections a trial may not vary: its identity, and the instance and budget all trials share."""
HIGHER_IS_BETTER = ("ic", "rank_ic", "hit_rate")
MODEL_PATHS = ("model.", "data.window", "data.features", "train.loss", "train.huber_delta")
"""Space paths that change what a trial's model is, what it reads or what it minimizes:
every value of them that a trial may get is proven before anything is rented."""


class SweepMeta(Section):
    id: str | None = Field(default=None, pattern=JOB_ID_RE)
    """Sweep id, the folder under `ml-artifacts/` that holds `sweep.json`. Default: derived
    from the sweep's content and the base dataset's fingerprint (`sweep-` + 12 hex digits)."""
    name: str = Field(default="", max_length=200)
    """Human-readable name; each trial is named after it. Default: empty."""


class Param(Section):
    """One dimension of the space: exactly one of `choice`, `uniform`, `log_uniform` or
    `integer`."""

    choice: tuple[Any, ...] | None = None
    """The values to choose from, any YAML value the field takes (`[[64], [128, 64]]`)."""
    uniform: tuple[float, float] | None = None
    """`[low, high]`: a float drawn uniformly."""
    log_uniform: tuple[float, float] | None = None
    """`[low, high]`, both above 0: a float drawn uniformly in log space (learning rates)."""
    integer: tuple[int, int] | None = None
    """`[low, high]`, inclusive: an integer (widths, seeds, patience)."""
    step: int = Field(default=1, ge=1)
    """`integer` only: the spacing of the integers. Default: 1."""

    @model_validator(mode="after")
    def _one_kind(self) -> Param:
        if self.choice == ():
            raise ValueError("`choice`: give at least one value")
        given = [k for k in ("choice", "uniform", "log_uniform", "integer") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of `choice`, `uniform`, `log_uniform`, `integer`")
        low_high = self.uniform or self.log_uniform or self.integer
        if low_high is not None and not low_high[0] < low_high[1]:
            raise ValueError(f"`{given[0]}`: low {low_high[0]} must be below high {low_high[1]}")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError("`log_uniform`: low must be above 0")
        if self.step != 1 and self.integer is None:
            raise ValueError("`step` only applies to `integer`")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "uniform", "log_uniform", "integer") if getattr(self, k))

    def grid(self) -> list[Any] | None:
        """Every value, for a grid; None for a continuous range."""
        if self.choice is not None:
            return list(self.choice)
        if self.integer is not None:
            return list(range(self.integer[0], self.integer[1] + 1, self.step))
        return None

    def corners(self) -> list[Any]:
        """The values that bound what a trial may get: each choice, or both ends (for
        integers, the last one the step reaches)."""
        if self.choice is not None:
            return list(self.choice)
        if self.integer is not None:
            values = range(self.integer[0], self.integer[1] + 1, self.step)
            return [values[0], values[-1]] if len(values) > 1 else [values[0]]
        return list(self.uniform or self.log_uniform or ())


class Objective(Section):
    metric: Literal["ic", "rank_ic", "hit_rate", "val_loss", "loss"] = "ic"
    """The validation metric a trial is judged by: the committed model's final value, and at
    each evaluation for pruning. Default: `ic`."""
    direction: Literal["maximize", "minimize"] | None = None
    """Default: `maximize` for `ic`, `rank_ic` and `hit_rate`, `minimize` for the losses."""

    @property
    def maximize(self) -> bool:
        if self.direction is not None:
            return self.direction == "maximize"
        return self.metric in HIGHER_IS_BETTER


class Pruning(Section):
    rule: Literal["off", "median", "halving"] = "off"
    """At each evaluation of a trial: `median` stops it when its objective is worse than the
    median of earlier trials at the same step; `halving` (successive halving) keeps only the
    best `1/reduction_factor` of trials at each rung of steps. Default: `off`."""
    warmup_steps: int = Field(default=0, ge=0)
    """`median`: no trial is stopped before this training step. Default: 0."""
    startup_trials: int = Field(default=2, ge=0)
    """`median`: trials that must finish before any is stopped. Default: 2."""
    min_steps: int | None = Field(default=None, ge=1)
    """`halving`: training steps before the first rung. Default: the first evaluation."""
    reduction_factor: int = Field(default=3, ge=2)
    """`halving`: one trial in this many goes on at each rung. Default: 3."""


class SweepLimits(Section):
    max_cost_usd: float = Field(default=20.0, gt=0)
    """Money limit of the whole sweep, every instance and every trial together, dollars.
    Default: 20."""
    max_runtime_minutes: float = Field(default=480, gt=0)
    """Wall-clock limit of the whole sweep from the instance start. Default: 480."""


class SweepSpec(Section):
    """A sweep: trials of one base JobSpec over a search space, on one rented instance."""

    sweep: SweepMeta = SweepMeta()
    """Identity of the sweep."""
    base: JobSpec
    """The JobSpec every trial starts from: a path (relative to the sweep file) or inline."""
    space: dict[str, Param] = Field(min_length=1)
    """Field path (as `--set` takes it, e.g. `train.lr`) → its range. Any field but those of
    `job`, `resources`, `limits` and `storage`."""
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    """How trials are chosen: every combination in the order the space is written (`grid`:
    choices and integers only, the last path varying fastest), at `random`, or by Optuna's
    Tree-structured Parzen Estimator (`tpe`). Default: `tpe`."""
    seed: int = Field(default=0, ge=0)
    """Seed of the sampler. Default: 0."""
    trials: int | None = Field(default=None, ge=1, le=10_000)
    """Trials to run. Required for `random` and `tpe`; for `grid` the grid's size (at most)."""
    objective: Objective = Objective()
    """What the best trial is."""
    pruning: Pruning = Pruning()
    """Stopping hopeless trials early, at their evaluation points."""
    trials_per_instance: int = Field(default=1, ge=1, le=16)
    """Trials run at once on the instance's GPU (while its memory allows). Default: 1."""
    limits: SweepLimits = SweepLimits()
    """Limits of the whole sweep; the launcher's other limits come from the base spec."""

    @model_validator(mode="after")
    def _searchable(self) -> SweepSpec:
        if self.sampler == "grid":
            continuous = [k for k, p in self.space.items() if p.grid() is None]
            if continuous:
                raise ValueError(
                    f"`sampler: grid` needs choices or integers; {', '.join(continuous)} "
                    "is a float range: use `random` or `tpe`"
                )
            if self.trials is not None and self.trials > self.grid_size:
                raise ValueError(
                    f"`trials`: {self.trials} is more than the grid's {self.grid_size}"
                )
        elif self.trials is None:
            raise ValueError(f"`trials`: required with `sampler: {self.sampler}`")
        return self

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.grid() or ()) for p in self.space.values())

    @property
    def n_trials(self) -> int:
        return self.trials if self.trials is not None else self.grid_size

    @property
    def resolved(self) -> bool:
        return self.sweep.id is not None or self.base.data.fingerprint is not None

    @property
    def sweep_id(self) -> str:
        """The explicit id, else one derived from the sweep's content (`derived_sweep_id`)."""
        return self.sweep.id or derived_sweep_id(self)

    def proof_points(self) -> list[dict[str, Any]]:
        """The values to prove a trial's model with before renting: every corner (each
        choice, or both ends of a range) of every dimension on a `MODEL_PATHS` path appears
        in at least one point, the dimensions dealt in step (point `i` takes corner `i` of
        each, wrapping round), and no point twice. Empty when the space leaves the model
        alone: then every trial trains the base's model."""
        dims = {k: p.corners() for k, p in self.space.items() if k.startswith(MODEL_PATHS)}
        points: list[dict[str, Any]] = []
        for i in range(max((len(c) for c in dims.values()), default=0)):
            point = {k: c[i % len(c)] for k, c in dims.items()}
            if point not in points:
                points.append(point)
        return points

    def trial_spec(self, number: int, params: dict[str, Any]) -> JobSpec:
        """The JobSpec of trial `number`: the base with `params` set, named after the sweep,
        tagged `sweep:<sweepId>`, its id derived from its content. A trial that varies the
        data drops the base's fingerprint: its own pre-flight sets it."""
        raw = self.base.model_dump(mode="json")
        raw["job"].pop("id", None)
        raw["job"]["name"] = f"{self.sweep.name or self.sweep_id} #{number}"
        raw["job"]["tags"] = [*raw["job"]["tags"], f"sweep:{self.sweep_id}"]
        if any(key.startswith("data.") for key in params):
            raw["data"]["fingerprint"] = None
        for key, value in params.items():
            problem = set_path(raw, key, value)
            if problem:
                raise SpecError(f"trial {number}: bad parameter", [problem])
        return spec_from_dict(raw, f"trial {number}")


def instance_spec(sweep: SweepSpec) -> JobSpec:
    """The JobSpec the launcher rents and watches the sweep's instance by: the base's data,
    resources and storage, the sweep's id, and the sweep's money and runtime limits for the
    whole sweep (the base's other limits: provisioning, heartbeat, attempts, retry window)."""
    base = sweep.base
    job = base.job.model_copy(
        update={"id": sweep.sweep_id, "name": sweep.sweep.name or sweep.sweep_id}
    )
    limits = base.limits.model_copy(
        update={
            "max_cost_usd": sweep.limits.max_cost_usd,
            "max_runtime_minutes": sweep.limits.max_runtime_minutes,
        }
    )
    return base.model_copy(update={"job": job, "limits": limits})


def derived_sweep_id(sweep: SweepSpec) -> str:
    """`sweep-` + 12 hex digits of what makes the sweep what it is: the resolved base (its
    data's fingerprint included), the space, the sampler and its seed, the trial count, the
    objective and the pruning. Budget, concurrency and name may change without making a new
    sweep, so a sweep launched again with a larger budget continues where it stopped."""
    if sweep.base.data.fingerprint is None:
        raise UnresolvedSpec(
            "the sweep id is derived from its base and its dataset: resolve the base against "
            "the store first"
        )
    data = sweep.model_dump(
        mode="json", include={"base", "space", "sampler", "seed", "objective", "pruning"}
    )
    data["base"]["job"].pop("id", None)
    data["trials"] = sweep.n_trials
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return f"sweep-{digest[:12]}"


# -- reading ---------------------------------------------------------------------------------
def load_sweep(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> SweepSpec:
    """A sweep file; a `base` given as a path is read relative to it. `overrides` set fields
    of the base, as `--set` does for a JobSpec."""
    path = Path(path)
    text = read_spec_text(path, "sweep")
    return parse_sweep(text, source=str(path), here=path.parent, overrides=overrides)


def parse_sweep(
    text: str,
    source: str = "<sweep>",
    here: Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
) -> SweepSpec:
    raw = yaml_mapping(text, source, "a sweep")
    base = raw.get("base")
    if isinstance(base, str):
        base_path = (here or Path(".")) / base
        raw["base"] = load_spec(base_path, overrides).model_dump(mode="json")
    elif overrides:
        raw["base"] = _with_overrides(base, overrides, source)
    return sweep_from_dict(raw, source)


def _with_overrides(base: object, overrides: tuple[str, ...] | list[str], source: str) -> object:
    if not isinstance(base, dict):
        return base
    for item in overrides:
        key, value = parse_override(item, source)
        problem = set_path(base, key, value)
        if problem:
            raise SpecError(f"{source}: bad override", [problem])
    return base


def sweep_from_dict(raw: dict[str, Any], source: str = "<sweep>") -> SweepSpec:
    try:
        sweep = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        problems = describe_errors(exc.errors(include_url=False), SweepSpec)
        raise SpecError(f"{source}: {len(problems)} problem(s) in the sweep", problems) from None
    problems = space_problems(sweep)
    if problems:
        raise SpecError(f"{source}: {len(problems)} problem(s) in the sweep", problems)
    return sweep


def space_problems(sweep: SweepSpec) -> list[str]:
    """Every path and value of the space that would not make a valid trial, each as
    `space.<path>: …`: a fixed section, an unknown field, or a value the field refuses."""
    problems = []
    base = sweep.base.model_dump(mode="json")
    for key, param in sweep.space.items():
        where = f"space.{key}"
        if key.split(".")[0] in FIXED_SECTIONS:
            problems.append(
                f"{where}: trials cannot vary `{key.split('.')[0]}`: it is the sweep's "
                "identity, instance and budget (set it in the base or the sweep's `limits`)"
            )
            continue
        for value in param.corners():
            raw = json.loads(json.dumps(base))
            if key.startswith("data."):
                raw["data"]["fingerprint"] = None
            problem = set_path(raw, key, value)
            if problem is None:
                try:
                    JobSpec.model_validate(raw)
                except ValidationError as exc:
                    problem = "; ".join(describe_errors(exc.errors(include_url=False), JobSpec))
            if problem:
                problems.append(f"{where}: {json.dumps(value)} makes no valid trial: {problem}")
                break
    return problems


def dump_sweep(sweep: SweepSpec) -> str:
    """The resolved sweep (base inline, defaults filled in, sweep id set): what the instance
    runs and what the sweep folder keeps."""
    data = sweep.model_dump(mode="json")
    data["sweep"]["id"] = sweep.sweep_id
    return write_yaml(data)
