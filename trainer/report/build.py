"""`report JOB [--vs JOB|production]`: the evidence of one job (and of the one it is compared
with) gathered, and the page written to a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from trainer.errors import ObjectNotFound, UnknownJob
from trainer.promotion.gate import resolve_symbol
from trainer.promotion.production import production_paths, read_live
from trainer.report.evidence import Evidence, load_evidence
from trainer.report.page import render
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout

PRODUCTION = "production"


def gather(
    store: ObjectStore, bucket: str, job_id: str, vs: str | None = None, symbol: str | None = None
) -> list[Evidence]:
    """The job's evidence, then that of `vs`: another job id, or `production` (the job's
    symbol's live model, through the job that produced it)."""
    job = load_evidence(store, bucket, job_id)
    if vs is None:
        return [job]
    if vs != PRODUCTION:
        return [job, load_evidence(store, bucket, vs)]
    return [job, production_evidence(store, bucket, job, symbol)]


def production_evidence(
    store: ObjectStore, bucket: str, job: Evidence, symbol: str | None
) -> Evidence:
    """The evidence of the job whose model is live for `job`'s symbol."""
    chosen = resolve_symbol(symbol, job.summary.symbols, job.job_id)
    paths = production_paths(Layout(artifacts_bucket=bucket), chosen)
    live = read_live(store, paths)
    if live is None or live.manifest.source_job is None:
        raise ObjectNotFound(
            f"{store.uri(paths.manifest)}: {chosen} has no production model from a job to "
            "compare with; promote one first (`quantlab-train promote JOB`)"
        )
    source = live.manifest.source_job
    title = f"production v{live.version} ({source})"
    try:
        return load_evidence(store, bucket, source, title=title)
    except UnknownJob:
        raise UnknownJob(
            f"production v{live.version} of {chosen} came from job {source}, whose artifacts "
            f"are no longer in {store.uri(Layout(artifacts_bucket=bucket).jobs_root)}"
        ) from None


def write_report(jobs: list[Evidence], out: Path) -> Path:
    """The page for `jobs`, written atomically to `out` (a half-written page never shows)."""
    return write_page(render(jobs), out)


def write_page(page: str, out: Path) -> Path:
    """An HTML page written atomically to `out`, readable by anyone as any file here."""
    out = out.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a page anyone may read, like any file written here
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out.resolve()


def default_out(jobs: list[Evidence]) -> Path:
    """`reports/<job>.html`, or `reports/<job>-vs-<other>.html`."""
    name = "-vs-".join(e.job_id for e in jobs)
    return Path("reports") / f"{name}.html"
