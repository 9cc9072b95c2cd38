"""Draws one live table after another, each from several threads at once, as a launch of
many jobs does: rows added and redrawn, lines printed above, log records written through
`sys.stderr`, every job finished. Run in a terminal: `python -m tests.board_hammer ROUNDS`.
Each round's lines name the round, so a reader of the screen can tell which table is whose."""

from __future__ import annotations

import logging
import sys
import threading

from trainer.cli import _Stderr as StderrHandler
from trainer.launcher.board import Board, Progress

THREADS, STEPS = 6, 6


def one_round(r: int, log: logging.Logger) -> None:
    board = Board(sys.stderr)
    gate = threading.Barrier(THREADS)

    def job(k: int) -> None:
        gate.wait()  # every thread's first move at once: the first drawing is the sharpest
        for i in range(STEPS):
            if (k + i) % 3 == 0:
                board.update(f"r{r}-job-{k}", Progress(state="training", step=i * 10**k))
            elif (k + i) % 3 == 1:
                board.print(f"r{r} line {k}.{i} " + "x" * (7 * k))
            else:
                log.info("r%d log %d.%d %s", r, k, i, "y" * (5 * k))
        board.finish(f"r{r}-job-{k}", "succeeded", 0.1)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    board.close()


def main(rounds: int) -> None:
    sys.setswitchinterval(1e-6)  # threads switch as often as they can
    log = logging.getLogger("quantlab.hammer")
    handler = StderrHandler()  # the CLI's: whatever `sys.stderr` is at each record
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    for r in range(rounds):
        one_round(r, log)


if __name__ == "__main__":
    main(int(sys.argv[1]))
