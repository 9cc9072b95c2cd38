"""The report page: one self-contained HTML file (inline CSS and SVG, no script, and a content
security policy that lets it fetch nothing), for one job or two side by side."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable, Sequence

from trainer.redact import Secrets
from trainer.report import plots
from trainer.report.evidence import Evidence
from trainer.store.records import AttemptRecord, epoch_of, utc_now

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 64rem;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.sub { color: #666; margin-top: 0; } .note { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { padding: 0.15rem 0.7rem;
        text-align: left; border-bottom: 1px solid #eee; vertical-align: top; }
th { font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 12px; }
.jobs { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: 1rem; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.3em; }
"""

Text = Callable[[object], str]


def render(jobs: Sequence[Evidence], secrets: Secrets | None = None) -> str:
    """The page for `jobs` (one, or a job and the one it is compared with)."""
    secrets = secrets or Secrets()

    def t(value: object) -> str:
        return html.escape(secrets.redact(str(value)))

    title = " vs ".join(e.title for e in jobs)
    figures = [
        (
            "Loss",
            plots.loss_plot(jobs),
            "Training loss at each log step; validation loss at each evaluation.",
        ),
        (
            "IC",
            plots.ic_plot(jobs),
            "Pearson (IC) and Spearman (rank IC) correlation of the "
            "predictions with the labels on every validation row.",
        ),
        (
            "Daily IC",
            plots.daily_ic_plot(jobs),
            "IC within each UTC day of the validation period: how steady the signal is.",
        ),
        (
            "Deciles",
            plots.decile_plot(jobs),
            "Validation rows grouped by the rank of their "
            "prediction; a useful ranking climbs from left to right.",
        ),
        (
            "Sign strategy",
            plots.strategy_plot(jobs),
            "Illustrative only: every validation "
            "row's label taken in the predicted direction, in time order, without costs, "
            "slippage or the overlap of label windows. Not a backtest.",
        ),
    ]
    importance = plots.importance_plot(jobs)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{t(title)}: quantlab-train report</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{t(title)}</h1>",
        f'<p class="sub">quantlab-train report, written {t(utc_now())}</p>',
        _legend(jobs, t),
        "<h2>Outcome</h2>",
        _outcome_table(jobs, t),
    ]
    for heading, svg, note in figures:
        parts += [
            f"<h2>{t(heading)}</h2>",
            f'<p class="note">{t(note)}</p>',
            f"<figure>{svg}</figure>",
        ]
    parts.append("<h2>Permutation importance</h2>")
    if importance is None:
        parts.append(
            '<p class="note">Not recorded: these jobs were committed before the '
            "runner recorded feature importance.</p>"
        )
    else:
        parts += [
            '<p class="note">How much the validation IC drops when one feature is shuffled '
            "across the validation sample (2,048 rows, 3 shuffles each).</p>",
            f"<figure>{importance}</figure>",
        ]
    parts += ["<h2>Cost, timings and attempts</h2>", _cost(jobs, t)]
    parts += ["<h2>Dataset</h2>", _datasets(jobs, t)]
    parts += ["<h2>Resolved spec</h2>", '<div class="jobs">']
    parts += [f"<div><h3>{t(e.title)}</h3><pre>{t(e.spec_text)}</pre></div>" for e in jobs]
    parts += ["</div>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _legend(jobs: Sequence[Evidence], t: Text) -> str:
    items = [
        f'<span class="swatch" style="background:{color}"></span>{t(e.title)} '
        f'<span class="note">{t(e.uri)}</span>'
        for e, color in zip(jobs, plots.COLORS, strict=False)
    ]
    return "<p>" + "<br>".join(items) + "</p>"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], t: Text) -> str:
    head = "".join(f"<th>{t(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [f"<th>{t(row[0])}</th>"]
        for cell in row[1:]:
            numeric = isinstance(cell, int | float) or str(cell)[:1] in "$-+0123456789"
            cells.append(f'<td class="num">{t(cell)}</td>' if numeric else f"<td>{t(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _outcome_table(jobs: Sequence[Evidence], t: Text) -> str:
    def row(name: str, get: Callable[[Evidence], object]) -> list[object]:
        return [name, *(get(e) for e in jobs)]

    def metric(name: str, fmt: str) -> list[object]:
        return row(name, lambda e: format(getattr(e.manifest.metrics.final, name), fmt))

    rows = [
        row("name", lambda e: e.summary.name or "–"),
        row("symbols", lambda e: ", ".join(e.summary.symbols)),
        row("dates", lambda e: e.summary.date_span or "–"),
        row("model / loss", lambda e: f"{e.summary.model} / {e.summary.loss}"),
        metric("ic", ".4f"),
        metric("rank_ic", ".4f"),
        metric("hit_rate", ".3f"),
        row("loss (train.loss)", lambda e: _maybe(e.manifest.metrics.final.loss)),
        metric("val_loss", ".5g"),
        row("validation rows", lambda e: f"{e.manifest.metrics.final.rows:,}"),
        row("training rows seen", lambda e: f"{e.manifest.metrics.rows_seen_all_ranks:,}"),
        row("non-finite rows dropped", lambda e: f"{e.manifest.metrics.rows_dropped_non_finite:,}"),
        row("steps", lambda e: f"{e.manifest.metrics.steps:,}"),
        row("best step", lambda e: f"{e.manifest.metrics.best_step:,}"),
        row("stopped early", lambda e: "yes" if e.manifest.metrics.stopped_early else "no"),
    ]
    return _table(["", *(e.title for e in jobs)], rows, t)


def _cost(jobs: Sequence[Evidence], t: Text) -> str:
    out = []
    for e in jobs:
        m, s = e.manifest, e.summary
        wall = epoch_of(m.ended_at) - epoch_of(m.started_at)
        facts = [
            ["started", m.started_at],
            ["ended", m.ended_at],
            ["committed", m.committed_at],
            ["job wall time", f"{wall:,.0f} s"],
            ["training time", f"{m.metrics.train_seconds:,.1f} s"],
            ["device", m.device],
            ["code version", m.code_version],
            [
                "cost",
                f"${s.cost_usd:.4f} over {s.launches} launch(es)"
                if s.launches
                else "not launched on Vast.ai (a local run)",
            ],
        ]
        out.append(f"<div><h3>{t(e.title)}</h3>{_table(['', ''], facts, t)}")
        if s.attempts:
            out.append(_attempts(s.attempts, t))
        out.append("</div>")
    return '<div class="jobs">' + "".join(out) + "</div>"


def _attempts(attempts: Sequence[AttemptRecord], t: Text) -> str:
    header = [
        "launch.attempt",
        "instance",
        "gpu",
        "$/h",
        "outcome",
        "cost",
        "provisioning",
        "running",
    ]
    rows = [
        [
            f"{a.launch}.{a.number}",
            a.instance_id,
            a.gpu or "–",
            f"${a.dph:.4f}",
            a.outcome + (f": {a.reason}" if a.reason else ""),
            f"${a.cost_usd:.4f}",
            f"{a.provisioning_s:.0f} s",
            f"{a.running_s:.0f} s",
        ]
        for a in attempts
    ]
    return _table(header, rows, t)


def _datasets(jobs: Sequence[Evidence], t: Text) -> str:
    out = []
    for e in jobs:
        d = e.dataset
        if d is None:
            out.append(f"<div><h3>{t(e.title)}</h3><p>No dataset fingerprint recorded.</p></div>")
            continue
        facts = [
            ["featureset", d.featureset],
            ["config hash", d.config_hash],
            ["label", f"{d.label} ({d.label_horizon_sec} s horizon)"],
            ["features", f"{len(d.features)}: {', '.join(d.features)}"],
            ["training ends", _ms(d.train_end_ms)],
            ["validation starts", _ms(d.val_start_ms)],
        ]
        parts = [["partition", "rows", "bytes", "config hash"]]
        rows = [[p.uri, f"{p.rows:,}", f"{p.bytes:,}", p.config_hash] for p in d.partitions]
        out.append(
            f"<div><h3>{t(e.title)}</h3>{_table(['', ''], facts, t)}"
            f"{_table(parts[0], rows, t)}</div>"
        )
    return '<div class="jobs">' + "".join(out) + "</div>"


def _maybe(value: float | None) -> str:
    return "–" if value is None else f"{value:.5g}"


def _ms(value: int) -> str:
    return dt.datetime.fromtimestamp(value / 1000, dt.UTC).isoformat(timespec="seconds")
