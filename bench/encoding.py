"""Parquet encodings for feature files: file size and single-core decode rate of one
synthetic day written with dictionary encoding (pyarrow's default, what the generator
wrote before), plain, and byte-stream split (what it writes now), all zstd.

    python bench/encoding.py [--rows 850000] [--features 40] [--rounds 5] [--json]

The encodings are decoded in alternating rounds; each one's rate is its median round
(rows per CPU-second of one thread), and its best round beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from measure import bench_cli, cpu_s  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from trainer.data.synth import SynthConfig, column_encodings, make_day

    cfg = SynthConfig(rows_per_day=args.rows, n_features=args.features, row_group_size=100_000)
    table = make_day("btcusdt", "20250101", cfg)
    floats = [n for n in table.column_names if n != "ts"]
    raw = sum(table.column(n).nbytes for n in table.column_names)
    kinds: dict[str, dict[str, Any]] = {
        "dictionary (before)": {},
        "plain": {"use_dictionary": False},
        "byte_stream_split (now)": {
            "use_dictionary": False,
            "column_encoding": column_encodings(table.schema),
        },
    }
    out: dict[str, Any] = {"rows": table.num_rows, "raw_mb": raw / 1e6, "encodings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for k, (name, kw) in enumerate(kinds.items()):
            paths[name] = Path(tmp) / f"{k}.parquet"
            pq.write_table(table, paths[name], row_group_size=100_000, compression="zstd", **kw)
        rates: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(args.rounds):
            for name, path in paths.items():
                pf = pq.ParquetFile(path)
                cpu0 = cpu_s()
                for g in range(pf.num_row_groups):
                    pf.read_row_group(g, columns=[*floats, "ts"], use_threads=False)
                rates[name].append(table.num_rows / (cpu_s() - cpu0))
        for name, path in paths.items():
            size = os.path.getsize(path)
            out["encodings"][name] = {
                "file_mb": size / 1e6,
                "vs_raw": size / raw,
                "decode_rows_per_cpu_s": statistics.median(rates[name]),
                "decode_rows_per_cpu_s_best": max(rates[name]),
            }
    out["load_average"] = os.getloadavg()
    return out


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=850_000)
    parser.add_argument("--features", type=int, default=40)


def table(out: dict[str, Any]) -> str:
    lines = [
        "| encoding (zstd) | file | vs raw | decode, rows per CPU-s (median; best) |",
        "|---|---:|---:|---:|",
    ]
    for name, e in out["encodings"].items():
        lines.append(
            f"| {name} | {e['file_mb']:.1f} MB | {e['vs_raw']:.2f}x | "
            f"{e['decode_rows_per_cpu_s'] / 1e6:.2f} M; "
            f"{e['decode_rows_per_cpu_s_best'] / 1e6:.2f} M |"
        )
    load = ", ".join(f"{x:.2f}" for x in out["load_average"])
    lines += ["", f"{out['rows']:,} rows, {out['raw_mb']:.1f} MB raw; load average {load}."]
    return "\n".join(lines)


def main() -> None:
    bench_cli(__doc__ or "", options, run, table)


if __name__ == "__main__":
    main()
