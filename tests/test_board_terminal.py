"""The live table drawn from many threads at once, in a real terminal (tmux): a launch of
several jobs adds rows, prints lines and logs from one thread per job. Every redraw moves the
cursor up by the height of the drawing before it, so one drawing slipped between another's
cursor move and its text leaves a stale copy of the table or eats a line. Twenty tables, six
threads each, started together: each table must be on the screen once, each row once, each
line whole and once."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.board_hammer import STEPS, THREADS
from tests.terminal import Terminal

ROOT = Path(__file__).resolve().parents[1]
HEADER = re.compile(r"^\s*job\s+state\s+try\s+spent\s+step", re.M)
ROUNDS, WIDTH = 20, 100


@pytest.fixture
def term(tmp_path: Path) -> Terminal:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed here (Debian: apt-get install tmux)")
    return Terminal(tmp_path, WIDTH)


def _run(term: Terminal, timeout: float = 120) -> str:
    command = shlex.join([sys.executable, "-m", "tests.board_hammer", str(ROUNDS)])
    term.start(command, {"TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}, ROOT)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            screen = term.capture()
            if "EXITED=" in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"the tables were not drawn in {timeout} s:\n{term.capture()}")
    finally:
        term.close()


def test_tables_drawn_from_many_threads_leave_no_stale_copy_and_lose_no_line(
    term: Terminal, tmp_path: Path
) -> None:
    screen = _run(term)
    (tmp_path / "screen.txt").write_text(screen)  # kept with the test's files
    assert "EXITED=0" in screen, screen
    lines = screen.splitlines()
    assert len(HEADER.findall(screen)) == ROUNDS, screen  # one table per round, no stale copy
    for r in range(ROUNDS):
        for k in range(THREADS):
            rows = [line for line in lines if re.match(rf"^\s*r{r}-job-{k}\s", line)]
            assert len(rows) == 1 and "succeeded" in rows[0], (r, k, rows)
            for i in range(STEPS):
                kind = ("row", "line", "log")[(k + i) % 3]
                if kind == "row":
                    continue
                text = (
                    f"r{r} line {k}.{i} " + "x" * (7 * k)
                    if kind == "line"
                    else f"r{r} log {k}.{i} " + "y" * (5 * k)
                )
                assert lines.count(text.rstrip()) == 1, (text, screen)  # whole, once
    assert all(len(line) <= WIDTH for line in lines)
