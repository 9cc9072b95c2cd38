"""How results are worded for people, the same in every command that shows them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from trainer.store.records import AttemptRecord, EvalMetrics


def metrics_line(m: EvalMetrics) -> str:
    """The validation metrics: IC first, the spec's loss and the mean squared error last."""
    loss = "n/a" if m.loss is None else f"{m.loss:.4f}"
    return (
        f"validation: ic {m.ic:.4f}  rank_ic {m.rank_ic:.4f}  hit_rate {m.hit_rate:.3f}  "
        f"loss {loss}  mse {m.val_loss:.4f}  ({m.rows:,} rows)"
    )


def rows_line(rows: Mapping[str, int]) -> str:
    dropped = rows.get("dropped_non_finite", 0)
    tail = f", {dropped:,} non-finite rows dropped" if dropped else ""
    return (
        f"rows: {rows.get('train', 0):,} training rows seen, "
        f"{rows.get('validation', 0):,} validation rows{tail}"
    )


def attempt_lines(attempts: Iterable[AttemptRecord]) -> list[str]:
    lines = []
    for a in attempts:
        gpu = f", {a.gpu}" if a.gpu else ""
        how = "attached to" if a.attached else "rented"
        lines.append(
            f"launch {a.launch} attempt {a.number}: {how} instance {a.instance_id}{gpu} at "
            f"${a.dph:.4f}/h: {a.outcome}, ${a.cost_usd:.4f} "
            f"(provisioning {a.provisioning_s:.0f} s, running {a.running_s:.0f} s)"
            + (f": {a.reason}" if a.reason else "")
        )
    return lines
