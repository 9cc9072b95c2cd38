"""Progress of a training run: one human line per log step on stderr, JSON lines to a file."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

log = logging.getLogger("quantlab.train")


def _eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class RunLog:
    """Writes every record to `metrics.jsonl` and a readable line to the log; `listener`
    (e.g. the heartbeat) sees each record too."""

    def __init__(
        self, metrics_path: Path, listener: Callable[[str, dict[str, float]], None] | None = None
    ) -> None:
        self._file: TextIO = open(metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._listener = listener

    def close(self) -> None:
        self._file.close()

    def _write(self, kind: str, record: dict[str, float]) -> None:
        self._file.write(json.dumps({"kind": kind, "time": time.time(), **record}) + "\n")
        self._file.flush()
        if self._listener is not None:
            self._listener(kind, record)

    def on_step(self, record: dict[str, float]) -> None:
        self._write("step", record)
        mem = f" mem {record['gpu_mem_gb']:.1f}GB" if "gpu_mem_gb" in record else ""
        log.info(
            "step %d epoch %d loss %.5f grad %.3f lr %.2e rows/s %s eta %s%s",
            record["step"],
            record["epoch"],
            record["loss"],
            record["grad_norm"],
            record["lr"],
            f"{record['rows_per_s']:,.0f}",
            _eta(record["eta_s"]),
            mem,
        )

    def on_eval(self, record: dict[str, float]) -> None:
        self._write("eval", record)
        log.info(
            "eval step %d loss %.5f val_loss %.5f ic %.4f rank_ic %.4f hit %.3f (%d rows)",
            record["step"],
            record["loss"],
            record["val_loss"],
            record["ic"],
            record["rank_ic"],
            record["hit_rate"],
            record["rows"],
        )
