"""A sweep's report page: the leaderboard and the objective of every trial at each of its
evaluations, the pruned ones drawn dashed to the step where they stopped. Self-contained
like a job's page (inline CSS and SVG, nothing fetched)."""

from __future__ import annotations

import html

from trainer.report import plots
from trainer.report.page import CSP, STYLE
from trainer.store.records import SweepRecord
from trainer.sweep.board import leaderboard, summary


def objective_plot(record: SweepRecord) -> str:
    fig = plots._figure(3.6)
    ax = fig.subplots()
    for t in record.trials:
        if not t.intermediate:
            continue
        steps, values = zip(*t.intermediate, strict=True)
        best = t.number == record.best
        ax.plot(
            steps,
            values,
            ls="--" if t.state == "pruned" else "-",
            lw=2.2 if best else 1.0,
            marker="o" if best else None,
            ms=3,
            label=f"#{t.number} {t.state}" + (" (best)" if best else ""),
        )
    title = f"{record.metric} at each evaluation (dashed: pruned)"
    return plots._done(fig, ax, "sweep-objective", (title, "training step", record.metric))


def render_sweep(record: SweepRecord) -> str:
    rows = leaderboard(record)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0]) if rows else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows
    )
    space = "".join(
        f"<tr><td><code>{html.escape(k)}</code></td><td>{html.escape(str(v))}</td></tr>"
        for k, v in record.space.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>sweep {html.escape(record.sweep_id)}</title><style>{STYLE}</style></head><body>"
        f"<h1>sweep {html.escape(record.sweep_id)}</h1>"
        f"<p class='sub'>{html.escape(summary(record))}</p>"
        f"<p class='sub'>sampler {html.escape(record.sampler)}, pruning "
        f"{html.escape(record.pruning)}, data read {record.data_reads} time(s), "
        f"cost ${record.cost_usd:.4f}</p>"
        f"<h2>Leaderboard</h2><table><tr>{head}</tr>{body}</table>"
        f"<p class='note'>* the best trial; its own page: <code>quantlab-train report "
        f"{html.escape(record.best_trial.job_id if record.best_trial else 'JOB')}</code></p>"
        f"<h2>Objective</h2><figure>{objective_plot(record)}</figure>"
        f"<h2>Space</h2><table>{space}</table></body></html>"
    )
