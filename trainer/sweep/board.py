"""The leaderboard of a sweep, pure: its record in, rows and a text table out.

Rows are in trial order, each with its parameters, state, objective and the best objective
so far (among the trials up to and including it), so the table reads as the search went."""

from __future__ import annotations

import math
from typing import Any

from trainer.store.records import SweepRecord, SweepTrial


def _value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _steps(t: SweepTrial) -> str:
    if t.steps is None:
        return "–"
    return f"{t.steps}" if t.planned_steps is None else f"{t.steps}/{t.planned_steps}"


def leaderboard(record: SweepRecord) -> list[dict[str, str]]:
    """One row per trial: `trial`, each parameter, `state`, the metric, `best so far`,
    `steps` (trained of planned: a pruned trial's are what it saved) and `job`."""
    rows, best = [], None
    for t in record.trials:
        if t.state == "complete" and t.value is not None and math.isfinite(t.value):
            better = best is None or (t.value > best if record.maximize else t.value < best)
            best = t.value if better else best
        state: str = t.state
        if t.state == "pruned" and t.pruned_at_step is not None:
            state = f"pruned@{t.pruned_at_step}"
        row = {"trial": str(t.number)}
        row.update({k: _value(t.params.get(k)) for k in record.space})
        row.update(
            {
                "state": state + (" *" if t.number == record.best else ""),
                record.metric: _value(t.value),
                "best so far": _value(best),
                "steps": _steps(t),
                "job": t.job_id,
            }
        )
        rows.append(row)
    return rows


def render(record: SweepRecord) -> str:
    """The leaderboard as aligned text, with a line that sums the sweep up."""
    rows = leaderboard(record)
    lines = [summary(record)]
    if rows:
        keys = list(rows[0])
        width = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
        lines.append("  ".join(k.ljust(width[k]) for k in keys).rstrip())
        lines += ["  ".join(r[k].ljust(width[k]) for k in keys).rstrip() for r in rows]
    return "\n".join(lines)


def summary(record: SweepRecord) -> str:
    counts = record.counts()
    done = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials yet"
    best = record.best_trial
    head = f"sweep {record.sweep_id} ({record.state}): {done} of {record.trials_planned}"
    if best is not None:
        head += f"; best trial {best.number} ({best.job_id}) {record.metric} {_value(best.value)}"
    if record.steps_saved:
        planned = sum(t.planned_steps or 0 for t in record.trials if t.steps is not None)
        head += f"; pruning saved {record.steps_saved} of {planned} planned steps"
    return head
