"""The report's plots, drawn with matplotlib (the `report` extra) as inline SVG: one job, or
two sharing each plot. Text is drawn as paths, so a page needs no font and no network."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from trainer.errors import UsageError
from trainer.report.analysis import DailyIC, deciles, ic_by_day, sign_strategy, thin
from trainer.report.evidence import Evidence

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = ("#1f77b4", "#d62728")
"""First job blue, the one it is compared with red."""
MAX_FEATURES = 30


def _figure(height: float = 3.3) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "the report needs matplotlib: pip install 'quantlab-trainer[report]' "
            "(or -e '.[report]' in a checkout)"
        ) from None
    return Figure(figsize=(7.6, height), dpi=100, layout="constrained")


def _svg(fig: Figure, name: str) -> str:
    """The figure as an `<svg>` element whose ids are unique on the page."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": name}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    for found in set(re.findall(r'id="([^"]+)"', text)):
        new = f"{name}-{found}"
        text = text.replace(f'id="{found}"', f'id="{new}"').replace(f"#{found})", f"#{new})")
        text = text.replace(f'href="#{found}"', f'href="#{new}"')
    return text.replace("<svg ", f'<svg role="img" aria-label="{name}" ', 1)


def _done(fig: Figure, ax: Axes, name: str, labels: tuple[str, str, str], zero: str = "") -> str:
    """Title and axis labels, a zero line (`h` or `v`) if asked, the legend: the SVG."""
    if zero == "h":
        ax.axhline(0, color="#888", lw=0.8)
    elif zero == "v":
        ax.axvline(0, color="#888", lw=0.8)
    title, xlabel, ylabel = labels
    ax.set_title(title, loc="left", fontsize=11 if len(title) < 60 else 10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8)
    return _svg(fig, name)


def _offset(k: int, n: int, width: float) -> float:
    """Where the k-th of n bars side by side sits, from its group's centre."""
    return (k - (n - 1) / 2) * width


def loss_plot(jobs: Sequence[Evidence]) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    for e, color in zip(jobs, COLORS, strict=False):
        if e.steps:
            x, y = thin(np.array([s.step for s in e.steps]), np.array([s.loss for s in e.steps]))
            ax.plot(x, y, color=color, lw=1.2, alpha=0.8, label=f"{e.title} training")
        if e.evals:  # the spec's loss, as training minimised it; MSE for older jobs
            ax.plot(
                [r.step for r in e.evals],
                [r.loss if r.loss is not None else r.val_loss for r in e.evals],
                color=color,
                ls="--",
                marker="o",
                ms=3,
                lw=1.4,
                label=f"{e.title} validation",
            )
    return _done(fig, ax, "loss", (f"Loss ({jobs[0].summary.loss})", "step", "loss"))


def ic_plot(jobs: Sequence[Evidence]) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    for e, color in zip(jobs, COLORS, strict=False):
        steps = [r.step for r in e.evals]
        ax.plot(
            steps, [r.ic for r in e.evals], color=color, marker="o", ms=3, label=f"{e.title} IC"
        )
        ax.plot(
            steps,
            [r.rank_ic for r in e.evals],
            color=color,
            marker="s",
            ms=3,
            ls=":",
            label=f"{e.title} rank IC",
        )
    return _done(fig, ax, "ic", ("IC and rank IC at each evaluation", "step", "correlation"), "h")


def daily_ic_plot(jobs: Sequence[Evidence]) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    days = sorted({d.day for e in jobs for d in _daily(e)})
    width = 0.8 / len(jobs)
    for k, (e, color) in enumerate(zip(jobs, COLORS, strict=False)):
        by_day = {d.day: d.ic for d in _daily(e)}
        xs = [i + _offset(k, len(jobs), width) for i, d in enumerate(days) if d in by_day]
        ax.bar(
            xs, [by_day[d] for d in days if d in by_day], width=width, color=color, label=e.title
        )
    ax.set_xticks(range(len(days)), days, rotation=45 if len(days) > 6 else 0, fontsize=8)
    return _done(fig, ax, "daily-ic", ("Validation IC per day (UTC)", "", "IC"), "h")


def decile_plot(jobs: Sequence[Evidence]) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    width = 0.8 / len(jobs)
    for k, (e, color) in enumerate(zip(jobs, COLORS, strict=False)):
        rows = deciles(e.predictions.pred, e.predictions.label)
        xs = [b + _offset(k, len(jobs), width) for b, _, _ in rows]
        ax.bar(xs, [mean for _, mean, _ in rows], width=width, color=color, label=e.title)
    ax.set_xticks(range(1, 11))
    labels = ("Mean label per prediction decile", "prediction decile (1 = lowest)", "mean label")
    return _done(fig, ax, "deciles", labels, "h")


def strategy_plot(jobs: Sequence[Evidence]) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    for e, color in zip(jobs, COLORS, strict=False):
        p = e.predictions
        ts, cum = sign_strategy(p.ts, p.label, p.pred)
        ax.plot(ts.astype("datetime64[ms]"), cum, color=color, lw=1.3, label=e.title)
    fig.autofmt_xdate()
    title = "Illustrative: cumulative return of trading the prediction's sign, no costs"
    return _done(fig, ax, "strategy", (title, "validation time (UTC)", "sum of sign × label"), "h")


def importance_plot(jobs: Sequence[Evidence]) -> str | None:
    """Permutation importance (IC drop) per feature, the first job's most important first;
    None when no job recorded it."""
    have = [
        (e.title, e.importance, c)
        for e, c in zip(jobs, COLORS, strict=False)
        if e.importance is not None
    ]
    if not have:
        return None
    names: list[str] = []
    for _, imp, _ in have:
        ranked = sorted(imp.features, key=lambda f: -f.ic_drop)
        names += [f.feature for f in ranked if f.feature not in names]
    names = names[:MAX_FEATURES]
    fig = _figure(height=max(2.6, 0.5 + 0.24 * len(names) * len(have)))
    ax = fig.add_subplot()
    height = 0.8 / len(have)
    for k, (title, imp, color) in enumerate(have):
        drop = {f.feature: f.ic_drop for f in imp.features}
        ys = [i + _offset(k, len(have), height) for i in range(len(names))]
        ax.barh(ys, [drop.get(n, 0.0) for n in names], height=height, color=color, label=title)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    labels = ("Permutation importance on the validation sample", "IC drop when shuffled", "")
    return _done(fig, ax, "importance", labels, "v")


def _daily(e: Evidence) -> list[DailyIC]:
    p = e.predictions
    return ic_by_day(p.ts, p.label, p.pred)
