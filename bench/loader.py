"""Loader benchmark: the streaming loader against pyarrow's own `read_table` and a naive
per-row `Dataset`, on one synthetic BBO dataset, from local files and from a loopback S3
endpoint (bench/s3_range_server.py). Each method runs in its own subprocess, so each peak
RSS is that method's alone.

    python bench/loader.py [--data DIR] [--days 10] [--rows-per-day 850000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

FEATURES = 40
ROW_GROUP = 100_000
SYMBOL = "btcusdt"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def dates(days: int) -> list[str]:
    return [f"202501{d:02d}" if d <= 31 else f"202502{d - 31:02d}" for d in range(1, days + 1)]


def ensure_dataset(root: Path, days: int, rows_per_day: int) -> Path:
    """Generate the dataset under `root/store` unless the same one is already there."""
    from trainer.data.synth import SynthConfig, generate
    from trainer.store import open_store
    from trainer.store.layout import Layout

    marker = root / "bench-dataset.json"
    want = {"days": days, "rows_per_day": rows_per_day, "features": FEATURES, "rg": ROW_GROUP}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return root / "store"
    shutil.rmtree(root / "store", ignore_errors=True)
    cfg = SynthConfig(rows_per_day=rows_per_day, n_features=FEATURES, row_group_size=ROW_GROUP)
    print(f"generating {days} days x {rows_per_day} rows into {root} ...", file=sys.stderr)
    store = open_store(f"file://{root / 'store'}")
    generate(store, Layout(), "binance", "bbo", [SYMBOL], dates(days), cfg)
    marker.write_text(json.dumps(want))
    return root / "store"


# -- the measured methods, each run in a child process ----------------------------------------
def _plan(store_root: Path, days: int) -> Any:
    """The pre-flight plan with a split window covering every row, so every method reads
    exactly the same rows."""
    import dataclasses

    from trainer.data.plan import preflight
    from trainer.data.split import SplitBounds
    from trainer.spec.sections import DataSpec
    from trainer.store import open_store
    from trainer.store.layout import Layout

    ds = dates(days)
    spec = DataSpec(
        exchange="binance",
        stream="bbo",
        symbols=(SYMBOL,),
        dates={"start": ds[0], "end": ds[-1]},  # type: ignore[arg-type]
        split={"validation_days": 1} if days > 1 else {"validation_fraction": 0.5},  # type: ignore[arg-type]
    )
    plan = preflight(spec, open_store(f"file://{store_root}"), Layout())
    end = plan.ts_max + 1
    return dataclasses.replace(plan, bounds=SplitBounds(val_start_ms=end, train_end_ms=end))


def _store(kind: str, store_root: Path) -> Any:
    from trainer.store import open_store

    return open_store("s3://" if kind == "s3" else f"file://{store_root}")


def run_pyarrow(kind: str, store_root: Path, days: int) -> dict[str, Any]:
    """Baseline: `pq.read_table` per file, into one preallocated (and pre-faulted, so the
    baseline pays no page faults) row-major float32 matrix of features and label."""
    import numpy as np
    import pyarrow.parquet as pq

    plan = _plan(store_root, days)
    store = _store(kind, store_root)
    cols = [*plan.features, plan.label]
    rss0 = _rss_mb()
    matrix = np.empty((plan.rows, len(cols)), np.float32)
    matrix.fill(0.0)  # touch every page now: np.zeros would fault them in while timed
    fs = store.arrow_fs()
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    at = 0
    for part in plan.partitions:
        table = pq.read_table(store.arrow_path(part.data), columns=cols, filesystem=fs)
        # Column-major staging then one transposing copy: 2-3x faster than per-column
        # strided writes into the row-major matrix.
        stage = np.empty((len(cols), table.num_rows), np.float32)
        for j, name in enumerate(cols):
            stage[j] = table.column(name).to_numpy()
        matrix[at : at + table.num_rows] = stage.T
        at += table.num_rows
        del table
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu_s": _cpu_s() - cpu0, "rows": at, "rss_start_mb": rss0}


def run_naive(store_root: Path, days: int, rows: int, batch_size: int) -> dict[str, Any]:
    """A per-row `Dataset` over an in-memory slice (the first `rows` rows), batched by a
    default `DataLoader`; slow, so it reads a slice and the rate is extrapolated."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from torch.utils.data import DataLoader, Dataset

    plan = _plan(store_root, days)
    store = _store("local", store_root)
    cols = [*plan.features, plan.label]

    class Rows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __init__(self, table: Any) -> None:
            self.x = np.column_stack([table.column(c).to_numpy() for c in plan.features])
            self.y = table.column(plan.label).to_numpy()

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.tensor(self.x[i]), torch.tensor(self.y[i])

    rss0, cpu0 = _rss_mb(), _cpu_s()
    t0 = time.perf_counter()
    pf = pq.ParquetFile(store.arrow_path(plan.partitions[0].data))
    groups = range(min(pf.num_row_groups, -(-rows // ROW_GROUP)))
    table = pf.read_row_groups(list(groups), columns=cols).slice(0, rows)
    seen = 0
    for _x, y in DataLoader(Rows(table), batch_size=batch_size, shuffle=True):
        seen += len(y)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu_s": _cpu_s() - cpu0, "rows": seen, "rss_start_mb": rss0}


def run_loader(kind: str, store_root: Path, days: int, batch_size: int) -> dict[str, Any]:
    """Our loader, one shuffled training epoch into CPU tensors, with a cache budget of a
    sixteenth of the decoded dataset."""
    from trainer.data.loader import BlockCache, StreamingLoader

    plan = _plan(store_root, days)
    store = _store(kind, store_root)
    budget = plan.rows * (len(plan.features) + 3) * 4 // 16
    loader = StreamingLoader(
        plan, store, split="train", batch_size=batch_size, cache=BlockCache(budget)
    )
    rss0, cpu0 = _rss_mb(), _cpu_s()
    t0 = time.perf_counter()
    rows = 0
    for _x, y in loader.epoch(0):
        rows += len(y)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "cpu_s": _cpu_s() - cpu0,
        "rows": plan.rows,
        "rows_delivered": rows,
        "rss_start_mb": rss0,
        "first_batch_s": loader.stats.first_batch_s,
        "cache_budget_mb": budget / 1e6,
        "dropped_non_finite": loader.stats.dropped_non_finite,
    }


def run_first_batch(store_root: Path, days: int, batch_size: int) -> dict[str, Any]:
    """Time to the first training batch with a 1-day plan and with the full plan, the two
    alternating (so that load from elsewhere hits both alike); medians of 5."""
    from trainer.data.loader import StreamingLoader

    store = _store("local", store_root)
    out: dict[str, Any] = {"rss_start_mb": _rss_mb()}
    plans = {n: _plan(store_root, n) for n in (1, days)}
    times: dict[int, list[float]] = {n: [] for n in plans}
    for rep in range(5):
        for n, plan in plans.items():
            loader = StreamingLoader(plan, store, split="train", batch_size=batch_size)
            it = loader.epoch(rep)
            t0 = time.perf_counter()
            next(it)
            times[n].append(time.perf_counter() - t0)
            it.close()
            loader.close(wait=True)  # no reads left running into the next measurement
    for n, samples in times.items():
        out[f"first_batch_{n}_days_s"] = statistics.median(samples)
    out["seconds"], out["rows"] = 0.0, 0
    return out


def _rss_mb() -> float:
    # Linux carries ru_maxrss over from the parent across fork and exec, which is why the
    # parent stays small (it generates the dataset in a child too); VmHWM cross-checks it.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> float:
    """User plus system CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(args: argparse.Namespace) -> None:
    root, days = Path(args.data) / "store", args.days
    method = args.child
    if method == "generate":
        ensure_dataset(Path(args.data), days, args.rows_per_day)
        return
    if method.startswith("pyarrow-"):
        out = run_pyarrow(method.split("-")[1], root, days)
    elif method == "naive":
        out = run_naive(root, days, args.naive_rows, 1024)
    elif method.startswith("loader-"):
        out = run_loader(method.split("-")[1], root, days, args.batch_size)
    else:
        out = run_first_batch(root, days, args.batch_size)
    out["peak_rss_mb"] = _rss_mb()
    out["vm_hwm_mb"] = _vm_hwm_mb()
    print(json.dumps(out))


# -- the parent: data, endpoint, children, report -----------------------------------------------
def measure(
    args: argparse.Namespace, data: Path, method: str, env: dict[str, str]
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", method, "--data", str(data)]
    cmd += ["--days", str(args.days), "--rows-per-day", str(args.rows_per_day)]
    cmd += ["--batch-size", str(args.batch_size), "--naive-rows", str(args.naive_rows)]
    print(f"running {method} ...", file=sys.stderr)
    done = subprocess.run(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed (exit {done.returncode})")
    lines = done.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return result


def _best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(rounds, key=lambda r: r["seconds"] / r["rows"]))
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    best["rows_per_s_rounds"] = [round(r["rows"] / r["seconds"]) for r in rounds]
    return best


def report(
    args: argparse.Namespace, store_root: Path, results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    total_rows = args.days * args.rows_per_day
    decoded = total_rows * (FEATURES * 4 + 4 + 8)  # features, label, int64 timestamp
    delivered_bytes = (FEATURES + 1) * 4
    files = sum(p.stat().st_size for p in store_root.rglob("data.parquet"))
    for r in results.values():
        if r["seconds"] > 0:
            r["rows_per_s"] = r["rows"] / r["seconds"]
            r["mb_per_s"] = r["rows_per_s"] * delivered_bytes / 1e6
            r["cpu_s_per_m_rows"] = r["cpu_s"] / r["rows"] * 1e6
    rate = {k: v.get("rows_per_s", 0.0) for k, v in results.items()}
    loader = results["loader-local"]
    fb = results["first-batch"]
    out = {
        "loader_vs_pyarrow_local": rate["loader-local"] / rate["pyarrow-local"],
        "loader_vs_pyarrow_s3": rate["loader-s3"] / rate["pyarrow-s3"],
        "loader_vs_naive": rate["loader-local"] / rate["naive"],
        "first_batch_s": loader["first_batch_s"],
        "first_batch_1_day_s": fb["first_batch_1_days_s"],
        f"first_batch_{args.days}_days_s": fb[f"first_batch_{args.days}_days_s"],
        "loader_peak_rss_mb": loader["peak_rss_mb"],
        "loader_rss_growth_mb": loader["peak_rss_mb"] - loader["rss_start_mb"],
        "rss_quarter_of_decoded_mb": decoded / 4 / 1e6,
        "dataset": {
            "days": args.days,
            "rows": total_rows,
            "features": FEATURES,
            "row_group_rows": ROW_GROUP,
            "parquet_mb": files / 1e6,
            "decoded_mb": decoded / 1e6,
        },
        "methods": results,
    }
    out["targets"] = {
        "loader_vs_pyarrow_local>=0.8": out["loader_vs_pyarrow_local"] >= 0.8,
        "loader_vs_pyarrow_s3>=0.75": out["loader_vs_pyarrow_s3"] >= 0.75,
        "loader_vs_naive>=10": out["loader_vs_naive"] >= 10,
        "loader_peak_rss<decoded/4": out["loader_peak_rss_mb"] < decoded / 4 / 1e6,
        "loader_rss_growth<decoded/4": out["loader_rss_growth_mb"] < decoded / 4 / 1e6,
        "first_batch_flat": fb[f"first_batch_{args.days}_days_s"]
        <= 1.5 * fb["first_batch_1_days_s"] + 0.05,
    }
    return out


def markdown(out: dict[str, Any]) -> str:
    m = out["methods"]
    base = {"local": m["pyarrow-local"]["rows_per_s"], "s3": m["pyarrow-s3"]["rows_per_s"]}
    lines = [
        "| method | source | rows/s | MB/s | vs pyarrow | CPU s per M rows | first batch "
        "| peak RSS (at start) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [
        ("pyarrow read_table → float32 matrix", "pyarrow-local", "local"),
        ("pyarrow read_table → float32 matrix", "pyarrow-s3", "s3"),
        ("naive per-row Dataset + DataLoader(1024)", "naive", "local"),
        ("StreamingLoader, shuffled, CPU tensors", "loader-local", "local"),
        ("StreamingLoader, shuffled, CPU tensors", "loader-s3", "s3"),
    ]
    for label, key, src in rows:
        r = m[key]
        fb = f"{r['first_batch_s'] * 1e3:.0f} ms" if r.get("first_batch_s") else "-"
        lines.append(
            f"| {label} | {src} | {r['rows_per_s'] / 1e6:.2f} M | {r['mb_per_s']:.0f} | "
            f"{r['rows_per_s'] / base[src]:.2f}x | {r['cpu_s_per_m_rows']:.2f} | {fb} | "
            f"{r['peak_rss_mb']:.0f} MB ({r['rss_start_mb']:.0f}) |"
        )
    d = out["dataset"]
    days = d["days"]
    lines += [
        "",
        f"Dataset: {days} days x {d['rows'] // days:,} rows, {d['features']} float32 features, "
        f"row groups of {d['row_group_rows']:,}, zstd; {d['parquet_mb']:.0f} MB of Parquet, "
        f"{d['decoded_mb']:.0f} MB decoded (a quarter: {d['decoded_mb'] / 4:.0f} MB).",
        f"Time to first batch: {out['first_batch_1_day_s'] * 1e3:.0f} ms with 1 day, "
        f"{out[f'first_batch_{days}_days_s'] * 1e3:.0f} ms with {days} days.",
        f"Loader vs naive: {out['loader_vs_naive']:.0f}x. Loader peak RSS "
        f"{out['loader_peak_rss_mb']:.0f} MB, of which {out['loader_rss_growth_mb']:.0f} MB "
        "grew while reading (the rest is the interpreter, torch and pyarrow).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder to keep the generated dataset in, reused")
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--rows-per-day", type=int, default=850_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--naive-rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per method")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="loader-bench-"))
    try:
        measure(args, data, "generate", {})
        store_root = data / "store"
        for path in store_root.rglob("data.parquet"):  # same page-cache state for everyone
            with open(path, "rb") as f:
                while f.read(16 << 20):
                    pass
        from s3_range_server import serve_in_thread

        server = serve_in_thread(store_root)
        s3_env = {**FAKE_AWS, "AWS_ENDPOINT_URL_S3": server.url, "AWS_ENDPOINT_URL": server.url}
        # The rounds alternate the methods, so that a burst of load from elsewhere on the
        # machine hits them all alike; each method keeps its fastest round, every round's
        # rate is reported, and its peak RSS is the largest of its rounds.
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.rounds):
            for method in ("pyarrow-local", "loader-local", "pyarrow-s3", "loader-s3", "naive"):
                env = s3_env if "s3" in method else {}
                runs.setdefault(method, []).append(measure(args, data, method, env))
        results = {method: _best(rounds) for method, rounds in runs.items()}
        results["first-batch"] = measure(args, data, "first-batch", {})
        server.shutdown()
        out = report(args, store_root, results)
        print(json.dumps(out, indent=2) if args.json else markdown(out))
    finally:
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
