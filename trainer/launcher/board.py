"""The live table people watch on a terminal: one row per job, redrawn in place by `rich`.

Only used when stderr is a terminal. Every other line (events, the relayed log, log records
of the `quantlab` loggers, which write to `sys.stderr` while the table redirects it) is printed
above the table, so nothing is drawn over, left stale or split across a redraw. Colour follows
the terminal and `NO_COLOR` (rich reads it).

Every write to the terminal happens under one lock, and only from the thread that changed
something: each drawing moves the cursor up by the height of the one before it, so two
threads drawing at once (rich's own refresh thread, a job's line printed while another job's
row is added) would leave a stale copy of the table behind."""

from __future__ import annotations

import io
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live


@dataclass(frozen=True)
class Progress:
    """One snapshot of a job as the watch sees it."""

    state: str
    instance_id: int | None = None
    gpu: str = ""
    attempt: int | None = None
    max_attempts: int | None = None
    spent_usd: float = 0.0
    budget_usd: float | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    loss: float | None = None
    rows_per_s: float | None = None
    eta_s: float | None = None
    val_ic: float | None = None
    elapsed_s: float = 0.0


STYLES = {
    "succeeded": "green",
    "already_done": "green",
    "training": "cyan",
    "failed": "red",
    "limit_exceeded": "red",
    "cancelled": "yellow",
    "stopped": "yellow",
}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def rate(rows_per_s: float | None) -> str:
    if rows_per_s is None:
        return "–"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if rows_per_s >= size:
            return f"{rows_per_s / size:.1f}{unit}"
    return f"{rows_per_s:.0f}"


def cells(p: Progress) -> dict[str, str]:
    """The row's text, column by column; `–` where nothing is known yet."""
    budget = f"/${p.budget_usd:g}" if p.budget_usd is not None else ""
    step = "–" if p.step is None else str(p.step)
    if p.step is not None and p.total_steps:
        step = f"{p.step}/{p.total_steps}"
    attempt = "–" if p.attempt is None else str(p.attempt)
    if p.attempt is not None and p.max_attempts:
        attempt = f"{p.attempt}/{p.max_attempts}"
    return {
        "state": p.state,
        "try": attempt,
        "spent": f"${p.spent_usd:.4f}{budget}",
        "step": step,
        "epoch": "–" if p.epoch is None else str(p.epoch),
        "rows/s": rate(p.rows_per_s),
        "eta": duration(p.eta_s) if p.state == "training" else "–",
        "val ic": "–" if p.val_ic is None else f"{p.val_ic:+.4f}",
    }


class Board:
    """The table of every job one command watches. Thread-safe; `close()` leaves the last
    drawing on the screen."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console

        self.console = Console(file=out, force_terminal=True, highlight=False)
        self._rows: dict[str, Progress] = {}
        self._lock = threading.RLock()  # the rows and every write to the terminal
        self._live: Live | None = None
        # From now until `close()`, whatever writes to `sys.stderr` writes under the lock: a
        # log record that found the plain stream before the first drawing would otherwise
        # land after it, unaccounted for, when its thread writes.
        self._stderr, self._above = sys.stderr, _Above(self, sys.stderr)
        sys.stderr = self._above

    def update(self, job_id: str, p: Progress) -> None:
        with self._lock:
            self._rows[job_id] = p
            self._draw()

    def finish(
        self, job_id: str, state: str, val_ic: float | None, spent_usd: float | None = None
    ) -> None:
        """The job ended: its row keeps the last figures with the outcome as its state, and
        the final cost where it is known (the one the summary gives, not the last poll's). A
        job that ended before the watch drew it (quick, or already done) gets its row now:
        every job of the command stays on the screen with its outcome."""
        with self._lock:
            last = self._rows.get(job_id) or Progress(state=state)
            fields = {**last.__dict__, "state": state, "eta_s": None}
            if val_ic is not None:
                fields["val_ic"] = val_ic
            if spent_usd is not None:
                fields["spent_usd"] = spent_usd
            self._rows[job_id] = Progress(**fields)
            self._draw()

    def print(self, text: str) -> None:
        """A line above the table (or plainly, before the first row), as written: a long one
        is wrapped by the terminal, not broken with newlines, so a URL or a command in it
        copies whole."""
        with self._lock:
            self.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def close(self) -> None:
        with self._lock:
            if sys.stderr is self._above:  # not taken over since
                sys.stderr = self._stderr
            live, self._live = self._live, None
            if live is None:
                return
            live.refresh()
            live.stop()
            # The last drawn line fills the width: the cursor waits past its end. Back to
            # the start of the line, so whatever is printed next starts at column 0.
            self.console.file.write("\r")
            self.console.file.flush()

    def _draw(self) -> None:
        """Redraw in place, the lock held. No refresh thread: the table changes only when a
        row does, and a thread of rich's own would draw outside the lock."""
        if self._live is None:
            from rich.live import Live

            self._live = Live(
                console=self.console,
                get_renderable=self._table,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        self._live.refresh()

    def _table(self) -> RenderableType:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), expand=False)
        table.add_column("job", no_wrap=True, overflow="ellipsis", min_width=6)
        for name in ("state", "try", "spent", "step", "epoch", "rows/s", "eta", "val ic"):
            right = name not in ("state",)
            table.add_column(
                name, no_wrap=True, overflow="ellipsis", justify="right" if right else "left"
            )
        with self._lock:
            rows = list(self._rows.items())
        for job_id, p in rows:
            row = cells(p)
            state = Text(row.pop("state"), style=STYLES.get(p.state, ""))
            table.add_row(Text(job_id), state, *(Text(v) for v in row.values()))
        return table


class _Above(io.TextIOBase):
    """`sys.stderr` while the board is open: each whole line written to it is printed above the
    table, under the board's lock. A line is held per thread until its newline, so two
    threads writing at once never splice their lines."""

    def __init__(self, board: Board, underlying: TextIO) -> None:
        super().__init__()
        self._board, self._underlying = board, underlying
        self._pending = threading.local()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._underlying.fileno()

    def write(self, text: str) -> int:
        lines = (getattr(self._pending, "text", "") + text).split("\n")
        self._pending.text = lines.pop()
        for line in lines:
            self._board.print(line)
        return len(text)

    def flush(self) -> None:
        held = getattr(self._pending, "text", "")
        if held:
            self._pending.text = ""
            self._board.print(held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._underlying, name)
