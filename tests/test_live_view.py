"""The launch's live view in a real terminal: `quantlab-train launch` against the Vast.ai fake
(real containers, loopback S3) inside tmux at 80 and 200 columns, with one job and with three.
Every capture, mid-run and final, must show the table once, one row per job, lines printed
above it whole, and the summary once per job; `NO_COLOR` must turn colour off."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_env import ROOT, Lab, lab, tiny_spec, with_data
from tests.terminal import Terminal
from trainer.launcher.reach import ALLOW_LOCAL_STORE
from trainer.spec import JobSpec, dump_spec
from trainer.store import ObjectStore

pytestmark = pytest.mark.slow  # end-to-end launches in a terminal

TMUX = shutil.which("tmux")
HEADER = re.compile(r"^\s*job\s+state\s+try\s+spent\s+step", re.M)
SGR_COLOUR = re.compile(r"\x1b\[[0-9;]*3[0-7](;[0-9]+)*m|\x1b\[[0-9;]*38;")


@pytest.fixture
def env(s3_env: dict[str, str], s3_store: ObjectStore, tmp_path: Path) -> Iterator[Lab]:
    if TMUX is None:
        pytest.skip("tmux is not installed here (Debian: apt-get install tmux)")
    with lab(s3_store, tmp_path) as found:
        yield found


def _launch_command(env: Lab, specs: list[JobSpec]) -> str:
    files = []
    for spec in specs:
        path = env.tmp / f"{spec.job_id}.yaml"
        path.write_text(dump_spec(spec))
        files.append(str(path))
    argv = [sys.executable, "-m", "trainer", "launch", *files, "--vast-url", env.fake.url,
            "--poll-s", "0.2", "--logs-every-s", "0.4",
            "--env", "QUANTLAB_STATUS_EVERY_SEC=0.3", "--env", "QUANTLAB_DEVICE=cpu",
            "--bad-hosts-file", str(env.tmp / "bad-hosts.json")]  # fmt: skip
    return shlex.join(argv)


def _terminal_env(extra: dict[str, str]) -> dict[str, str]:
    keep = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION",
            "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED", "VAST_API_KEY", "HOME",
            "PATH", ALLOW_LOCAL_STORE)  # fmt: skip
    found = {k: os.environ[k] for k in keep if k in os.environ}
    return {**found, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT), **extra}


def _check(screen: str, width: int, job_ids: list[str], final: bool) -> None:
    """No stale copy, no flipping row, nothing drawn through the table. A job's row shows up
    at its first poll: mid-run, some may not be there yet."""
    assert len(HEADER.findall(screen)) == 1, screen
    for job_id in job_ids:
        rows = [line for line in screen.splitlines() if re.match(rf"^\s*{job_id}\s+\w", line)]
        assert len(rows) == 1 if final else len(rows) <= 1, (job_id, rows, screen)
        for row in rows:
            assert "[" not in row and "quantlab." not in row, row  # no log text in it
    table = screen[HEADER.search(screen).start() :]  # type: ignore[union-attr]
    for line in table.splitlines()[1:]:
        assert "quantlab." not in line or not re.search(r"\$\d+\.\d{4}/\$", line), line
    assert all(len(line) <= width for line in screen.splitlines())


def _watch(term: Terminal, width: int, job_ids: list[str], timeout: float = 240) -> str:
    """Captures until the command exits; each one with the table in it is checked."""
    deadline, seen_table = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        screen = term.capture()
        ended = "EXITED=" in screen
        if HEADER.search(screen):
            _check(screen, width, job_ids, final=ended)
            seen_table = True
        if ended:
            assert seen_table, screen
            return screen
        time.sleep(0.5)
    raise AssertionError(f"the launch did not end in {timeout} s:\n{term.capture()}")


def _specs(env: Lab, n: int) -> list[JobSpec]:
    train = {"epochs": 3, "log_every_steps": 1, "eval_every_steps": 3}
    specs = [tiny_spec(f"lv-{n}-{k}", train={**train, "seed": k}) for k in range(n)]
    with_data(env.store, specs[0])  # the same days and symbol: one dataset for all
    return specs


@pytest.mark.parametrize("width", [80, 200])
@pytest.mark.parametrize("jobs", [1, 3])
def test_the_live_table_holds_up_in_a_real_terminal(
    env: Lab, tmp_path: Path, width: int, jobs: int
) -> None:
    specs = _specs(env, jobs)
    ids = [s.job_id for s in specs]
    term = Terminal(tmp_path, width)
    no_color = width == 200
    extra = {"NO_COLOR": "1"} if no_color else {}
    term.start(_launch_command(env, specs), _terminal_env(extra), ROOT)
    try:
        screen = _watch(term, width, ids)
        coloured = term.capture(escapes=True)
        (tmp_path / "screen.txt").write_text(screen)  # kept with the test's files
    finally:
        term.close()
    assert "EXITED=0" in screen, screen
    table_end = HEADER.search(screen).end()  # type: ignore[union-attr]
    for job_id in ids:
        final_row = next(line for line in screen.splitlines() if re.match(rf"^\s*{job_id}\s", line))
        assert "succeeded" in final_row and "+0." in final_row, final_row  # state and val IC
        summary = f"job {job_id}: succeeded"
        assert screen.count(summary) == 1 and screen.index(summary) > table_end
        cost = re.search(rf"{summary} \(.*?\), \$(\d+\.\d{{4}})", screen) or re.search(
            r"^cost: \$(\d+\.\d{4}) over", screen, re.M
        )  # the summary of several jobs, or of one
        assert cost and f"${cost.group(1)}/$" in final_row, (final_row, screen)  # one cost
        assert re.search(r"\[\d+\] .*quantlab\.train INFO eval step", screen)  # relayed log
    if no_color:
        assert not SGR_COLOUR.search(coloured), "colour codes despite NO_COLOR"
    else:
        assert SGR_COLOUR.search(coloured), "no colour on a colour terminal: the check is moot"
    env.assert_clean()
