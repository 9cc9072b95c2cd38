"""What is proven on this machine before anything is rented: the job's model, or for a
sweep every model its space can make (`SweepSpec.proof_points`), each built, stepped and
exported on real rows of the data it will read (`trainer.model.proof`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from trainer.data.plan import DatasetPlan
from trainer.errors import SpecError
from trainer.job.identity import resolve
from trainer.model.proof import ProofChild, ProofResult, prove
from trainer.spec import JobSpec
from trainer.spec.sweep import SweepSpec
from trainer.store.base import ObjectStore


@dataclass(frozen=True)
class Proven:
    """One model proven: the space's values it was made with (empty for a job's own)."""

    point: dict[str, Any]
    spec: JobSpec
    result: ProofResult | None
    """None when torch is not installed here and the model is a built-in one."""

    @property
    def values(self) -> str:
        """`space.model.hidden = [64]; space.data.window = 32`, or empty."""
        return "; ".join(f"space.{k} = {json.dumps(v)}" for k, v in self.point.items())


def proofs(
    spec: JobSpec,
    plan: DatasetPlan,
    store: ObjectStore,
    sweep: SweepSpec | None,
    child: ProofChild | None = None,
) -> Iterator[Proven]:
    """Prove each model in turn, yielding as each passes; the first that fails raises a
    SpecError naming its file:line and, for a sweep, the space's values that made it.
    `child`: a proof process started ahead, which the first proof uses."""
    points = sweep.proof_points() if sweep is not None else []
    if sweep is None or not points:
        yield Proven({}, spec, prove(spec, plan, store, child=child))
        return
    for point in points:
        trial = sweep.trial_spec(0, point)
        if any(key.startswith("data.") for key in point):
            # another window or feature list reads other columns or rows: its own pre-flight
            resolved = resolve(trial, store)
            trial, trial_plan = resolved.spec, resolved.plan
        else:
            trial_plan = plan
        proven = Proven(point, trial, None)
        try:
            result = prove(trial, trial_plan, store, child=child)
        except SpecError as exc:
            raise SpecError(
                f"{exc.headline}, in the sweep's trials with {proven.values}", exc.problems
            ) from None
        yield Proven(point, trial, result)
