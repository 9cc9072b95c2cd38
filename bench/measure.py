"""What the benchmarks measure and how they sum it up: wall time, CPU time and the peak
memory of a process tree around a block of code; the load average; medians of rounds
beside their bests, and ratios paired within a round."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any


def cpu_s(children: bool = False) -> float:
    """User plus system CPU seconds of this process (all threads), and of its waited-for
    children with `children`."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += c.ru_utime + c.ru_stime
    return total


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return out


class Meter:
    """Wall time, CPU time and peak resident memory (this process and its children,
    sampled every 10 ms; this process's own peak from the kernel as well) of a block. The
    sampling thread's own CPU time is left out."""

    def __init__(self, children: bool = False) -> None:
        self.children = children
        self.peak_kb = 0
        self.sampler_cpu = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> Meter:
        self.start_mb = _rss_kb(os.getpid()) / 1024
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.cpu0, self.t0 = cpu_s(self.children), time.perf_counter()
        return self

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.01):
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in _tree(me)))
        self.sampler_cpu = time.thread_time()  # what the sampling cost, left out of `cpu`

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.seconds = time.perf_counter() - self.t0
        cpu = cpu_s(self.children) - self.cpu0
        self._stop.set()
        self._thread.join()
        self.cpu = cpu - self.sampler_cpu
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.peak_kb = max(self.peak_kb, own)

    def result(self, rows: int) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "cpu_s": self.cpu,
            "rows": rows,
            "peak_mb": self.peak_kb / 1024,
            "start_mb": self.start_mb,
        }


def bench_cli(
    doc: str,
    options: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    rounds: int = 5,
) -> None:
    """A benchmark's command line: its own options, `--rounds` and `--json`; prints one
    JSON object, or the markdown table the README shows."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    options(parser)
    parser.add_argument("--rounds", type=int, default=rounds, help="alternating rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    out = run(args)
    print(json.dumps(out, indent=2) if args.json else table(out))


# -- summing up -------------------------------------------------------------------------------
def med_best(values: Sequence[float], higher_is_better: bool = True) -> dict[str, float]:
    best = max(values) if higher_is_better else min(values)
    return {"median": statistics.median(values), "best": best}


def paired(
    a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], figure: Callable[[Any], float]
) -> dict[str, float]:
    """`figure(a) / figure(b)`: the median of the ratios within each round, and the ratio of
    the two bests (figures where higher is better)."""
    ratios = [figure(x) / figure(y) for x, y in zip(a, b, strict=True)]
    return {
        "median": statistics.median(ratios),
        "best": max(figure(x) for x in a) / max(figure(y) for y in b),
    }


def rate(r: dict[str, Any]) -> float:
    return float(r["rows"] / r["seconds"])


def per_cpu(r: dict[str, Any]) -> float:
    """Rows per CPU-second."""
    return float(r["rows"] / r["cpu_s"])


def summary(result: dict[str, Any], peers: Sequence[str]) -> dict[str, Any]:
    """The figures the README shows, and whether each target holds."""
    out: dict[str, Any] = {"by_days": {}, "checks": {}}
    for days, d in result["by_days"].items():
        runs = d["runs"]
        table = {}
        for method, rounds in runs.items():
            table[method] = {
                "rows_per_s": med_best([rate(r) for r in rounds]),
                "cpu_s_per_m_rows": med_best([1e6 / per_cpu(r) for r in rounds], False),
                "peak_mb": med_best([r["peak_mb"] for r in rounds], False),
                "start_mb": statistics.median(r["start_mb"] for r in rounds),
            }
        fig: dict[str, Any] = {"methods": table, "load_average": d["load_average"]}
        for src in ("local", "s3"):
            loader = runs[f"loader-{src}"]
            fig[f"loader_vs_decode_cpu_{src}"] = paired(loader, runs[f"decode-{src}"], per_cpu)
            for peer in peers:
                key = f"{peer}-{src}"
                if key not in runs:
                    continue
                fig[f"vs_{key}"] = {
                    "rows_per_cpu_s": paired(loader, runs[key], per_cpu),
                    "rows_per_s": paired(loader, runs[key], rate),
                    "peak_mb": paired(runs[key], loader, lambda r: r["peak_mb"]),
                }
                out["checks"][f"{days}d: ahead of {key} in rows per CPU-s"] = (
                    fig[f"vs_{key}"]["rows_per_cpu_s"]["median"] > 1
                )
                out["checks"][f"{days}d: leaner than {key} in peak memory"] = (
                    fig[f"vs_{key}"]["peak_mb"]["median"] > 1
                )
            out["checks"][f"{days}d: {src} loader >= 0.6x per-core decode (CPU)"] = (
                fig[f"loader_vs_decode_cpu_{src}"]["median"] >= 0.6
            )
            cache = d.get("cache", {}).get(src)
            if cache is not None:
                fig[f"cache_{src}"] = cache
                gap = abs(cache["share_from_cache"] - cache["share_that_fits"])
                out["checks"][f"{days}d: {src} epoch 2 from cache = share that fits, ±5 pt"] = (
                    gap <= 0.05
                )
        fig["loader_s3_requests"] = d.get("loader_s3_requests", {})
        out["by_days"][days] = fig
    if "first_step" in result:
        fs = result["first_step"]["runs"]
        first: dict[str, Any] = {"load_average": result["first_step"]["load_average"]}
        for src in ("local", "s3"):
            for n in (1, 10, 30):
                first[f"{src}-{n}"] = med_best([r["seconds"] for r in fs[f"{src}-{n}"]], False)
            ratio = paired(fs[f"{src}-1"], fs[f"{src}-30"], lambda r: 1 / r["seconds"])
            first[f"{src}_30_vs_1"] = ratio
            out["checks"][f"{src}: first step at 30 days <= 1.5x at 1 day"] = ratio["median"] <= 1.5
        out["first_step"] = first
    if "windows" in result:
        out["windows"] = windows_summary(result["windows"], out["checks"])
    return out


def growth(r: dict[str, Any]) -> float:
    """Peak resident memory above the process's memory at the start of the measured block."""
    return float(r["peak_mb"] - r["start_mb"])


def windows_summary(w: dict[str, Any], checks: dict[str, bool]) -> dict[str, Any]:
    """Each window against the per-row loader, paired within a round: samples/s, and the
    growth of peak memory while streaming (the window's over the per-row loader's)."""
    base = w["runs"]["loader-local"]
    out: dict[str, Any] = {"days": w["days"], "load_average": w["load_average"], "methods": {}}
    for method, rounds in w["runs"].items():
        fig = {
            "samples_per_s": med_best([rate(r) for r in rounds]),
            "cpu_s_per_m_samples": med_best([1e6 / per_cpu(r) for r in rounds], False),
            "peak_mb": med_best([r["peak_mb"] for r in rounds], False),
            "growth_mb": med_best([growth(r) for r in rounds], False),
        }
        if method != "loader-local":
            fig["vs_per_row_samples_per_s"] = paired(rounds, base, rate)
            grown = [growth(a) / max(growth(b), 1.0) for a, b in zip(rounds, base, strict=True)]
            fig["growth_vs_per_row"] = {"median": statistics.median(grown), "worst": max(grown)}
            speed = fig["vs_per_row_samples_per_s"]["median"]
            checks[f"{method}: >= 0.7x the per-row loader's samples/s"] = speed >= 0.7
            checks[f"{method}: memory growth <= 1.5x the per-row loader's"] = (
                fig["growth_vs_per_row"]["median"] <= 1.5
            )
        out["methods"][method] = fig
    return out


def markdown_summary(s: dict[str, Any]) -> str:
    lines = []
    for days, fig in s["by_days"].items():
        lines += [
            f"### {days} days (load average over the rounds: "
            f"{', '.join(str(la[0]) for la in fig['load_average'])})",
            "",
            "| method | CPU-s per M rows (median; best) | rows/s (median; best) | peak RSS |",
            "|---|---:|---:|---:|",
        ]
        for method, m in fig["methods"].items():
            c, r, p = m["cpu_s_per_m_rows"], m["rows_per_s"], m["peak_mb"]
            lines.append(
                f"| {method} | {c['median']:.2f}; {c['best']:.2f} | "
                f"{r['median'] / 1e6:.2f} M; {r['best'] / 1e6:.2f} M | {p['median']:.0f} MB |"
            )
        lines.append("")
        for key, value in fig.items():
            if key.startswith(("vs_", "loader_vs", "cache_")) or key == "loader_s3_requests":
                lines.append(f"- {key}: {value}")
        lines.append("")
    if "first_step" in s:
        lines.append(f"first step: {s['first_step']}")
    if "windows" in s:
        w = s["windows"]
        lines += [
            f"### windows, {w['days']} days (load average over the rounds: "
            f"{', '.join(str(la[0]) for la in w['load_average'])})",
            "",
            "| method | samples/s (median; best) | CPU-s per M samples | peak RSS growth | "
            "vs per-row samples/s | growth vs per-row |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for method, m in w["methods"].items():
            r, c, g = m["samples_per_s"], m["cpu_s_per_m_samples"], m["growth_mb"]
            speed = m.get("vs_per_row_samples_per_s", {"median": 1.0})["median"]
            grow = m.get("growth_vs_per_row", {"median": 1.0})["median"]
            lines.append(
                f"| {method} | {r['median'] / 1e6:.2f} M; {r['best'] / 1e6:.2f} M | "
                f"{c['median']:.2f} | {g['median']:.0f} MB | {speed:.2f}x | {grow:.2f}x |"
            )
    lines += ["", "checks:"] + [f"- {k}: {'yes' if v else 'NO'}" for k, v in s["checks"].items()]
    return "\n".join(lines)
