"""After `demo`, with no Vast.ai key: `jobs` and `status` show the job and its metrics, and
`report` writes a page that a real headless Chromium renders, every plot drawn, nothing
fetched from anywhere, no console error."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_env import run_cli
from trainer.job.demo import DEMO_SPEC, run_demo
from trainer.job.run import run_job
from trainer.spec import load_spec
from trainer.store import open_store

pytestmark = pytest.mark.slow  # trains two jobs and drives a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FIGURES = ("loss", "ic", "daily-ic", "deciles", "strategy", "importance")


@pytest.fixture(scope="module")
def demo_store() -> Iterator[tuple[Path, str, str]]:
    """The demo's store, its job, and a second job on the same data (another seed)."""
    with tempfile.TemporaryDirectory(prefix="quantlab-report-") as tmp:
        root = Path(tmp) / "store"
        result, _ = run_demo(root)
        other = load_spec(DEMO_SPEC, ["train.seed=1", "job.id=demo-seed1"])
        run_job(other, open_store(f"file://{root}"), device="cpu")
        yield root, result.job_id, "demo-seed1"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed here (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900},
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()


def _render(context: object, page_file: Path, shot: Path) -> dict[str, object]:
    """Open the page; what the browser saw: console errors, requests that left the file,
    each figure's drawn size, and the screenshot."""
    page = context.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    left: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def route(r: object) -> None:
        url = r.request.url  # type: ignore[attr-defined]
        if url == page_file.as_uri() or url.startswith("data:"):
            r.continue_()  # type: ignore[attr-defined]
        else:
            left.append(url)
            r.abort()  # type: ignore[attr-defined]

    page.route("**/*", route)
    page.goto(page_file.as_uri(), wait_until="load")
    sizes = page.evaluate(
        """() => Array.from(document.querySelectorAll('figure svg')).map(s => {
             const r = s.getBoundingClientRect();
             const paths = s.querySelectorAll('path').length;
             return [s.getAttribute('aria-label'), r.width, r.height, paths];
           })"""
    )
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    return {"errors": errors, "left": left, "sizes": sizes}


def _not_blank(shot: Path) -> tuple[float, int]:
    """The share of pixels that are not background, and the number of colours."""
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    small = image.resize((image.width // 4, image.height // 4))
    pixels = [small.getpixel((x, y)) for x in range(small.width) for y in range(small.height)]
    inked = sum(1 for p in pixels if sum(p) < 720) / len(pixels)
    return inked, len(set(pixels))


def test_after_demo_jobs_status_and_report_work_without_a_vast_key(
    demo_store: tuple[Path, str, str], browser: object, tmp_path: Path
) -> None:
    root, job_id, _ = demo_store
    store = f"file://{root}"
    listed = json.loads(run_cli(["jobs", "--store", store, "--json"]).stdout)
    mine = next(j for j in listed if j["job_id"] == job_id)
    assert mine["state"] == "committed" and mine["name"] == "tiny-cpu" and mine["tags"] == ["demo"]
    assert mine["metrics"]["ic"] > 0.1 and mine["symbols"] == ["btcusdt"]

    status = run_cli(["status", job_id, "--store", store])
    assert status.code == 0, status.stderr
    assert status.stdout.startswith(f"job {job_id} (tiny-cpu): committed\n")
    assert f"validation: ic {mine['metrics']['ic']:.4f}" in status.stdout

    out = tmp_path / "page.html"
    written = run_cli(["report", job_id, "--store", store, "--out", str(out)])
    assert written.code == 0, written.stderr
    html = out.read_text()
    assert "http://" not in html.replace('xmlns="http://', "").replace(
        'xmlns:xlink="http://', ""
    )  # fmt: skip  (namespace names are not addresses)
    assert "https://" not in html and "<script" not in html
    seen = _render(browser, out, tmp_path / "page.png")
    assert seen["errors"] == [] and seen["left"] == []
    sizes = {name: (w, h, paths) for name, w, h, paths in seen["sizes"]}  # type: ignore[attr-defined]
    assert set(sizes) == set(FIGURES)
    for name, (w, h, paths) in sizes.items():
        assert w > 400 and h > 150 and paths > 10, (name, w, h, paths)
    inked, colours = _not_blank(tmp_path / "page.png")
    assert inked > 0.03 and colours > 20, (inked, colours)


def test_a_report_against_another_job_shares_every_plot(
    demo_store: tuple[Path, str, str], browser: object, tmp_path: Path
) -> None:
    root, job_id, other = demo_store
    out = tmp_path / "vs.html"
    written = run_cli(["report", job_id, "--vs", other, "--store", f"file://{root}",
                       "--out", str(out)])  # fmt: skip
    assert written.code == 0, written.stderr
    html = out.read_text()
    assert f"{job_id} vs {other}" in html and html.count("<svg") == len(FIGURES)
    seen = _render(browser, out, tmp_path / "vs.png")
    assert seen["errors"] == [] and seen["left"] == []
    # both jobs' colours are drawn in every figure
    for figure in html.split("<figure>")[1:]:
        assert "#1f77b4" in figure and "#d62728" in figure
    compared = run_cli(["compare", job_id, other, "--store", f"file://{root}", "--json"])
    assert json.loads(compared.stdout)["preferred"] in (job_id, other)
