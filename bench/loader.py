"""Loader benchmark: the streaming loader against the loaders a user would pick instead, on the
same synthetic BBO files, from local files and from a loopback S3 endpoint
(bench/s3_range_server.py), with the per-core decode rate of those files as the limit.

    python bench/loader.py [--data DIR] [--days 10,30] [--rows-per-day 850000]
                           [--rounds 3] [--windows 32,128] [--only windows] [--device cpu]
                           [--json] [--out FILE]

Every method runs in its own child process (so each peak memory is that method's alone),
the methods alternate within each round, and every round is kept: a figure is the median
round beside the best, a ratio is the median of the ratios paired within a round beside the
ratio of the bests, and the load average is recorded with every round. CPU seconds per
million rows is the figure that load barely moves; wall-clock rates are shown too.

Lookback windows (`--windows`) are measured against the per-row loader on the same data:
samples per second, and the growth of peak memory while streaming. `--device cuda` delivers
both onto the card (blocks copied whole, batches gathered there), as a GPU job does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from dataset import ROW_GROUP, dates, ensure_dataset, spec_dict, warm  # noqa: E402
from measure import Meter, load_average, summary  # noqa: E402

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
BATCH = 4096
PEERS = ("read_table", "pyarrow.dataset", "hf-datasets", "iterable-2-workers")


# -- shared by the children ---------------------------------------------------------------
def _plan(store_root: Path, days: int) -> Any:
    """The pre-flight plan of the first `days` days, with a split window covering every
    row, so every method reads exactly the same rows."""
    import dataclasses

    from trainer.data.plan import preflight
    from trainer.data.split import SplitBounds
    from trainer.spec import spec_from_dict
    from trainer.store import open_store
    from trainer.store.layout import Layout

    spec = spec_from_dict(spec_dict(dates(days), validation_days=1 if days > 1 else None))
    plan = preflight(spec.data, open_store(f"file://{store_root}"), Layout())
    end = plan.ts_max + 1
    return dataclasses.replace(plan, bounds=SplitBounds(val_start_ms=end, train_end_ms=end))


def _store(source: str, store_root: Path) -> Any:
    from trainer.store import open_store

    return open_store("s3://" if source == "s3" else f"file://{store_root}")


def _columns(plan: Any) -> list[str]:
    return [*plan.features, plan.label]


# -- the measured methods, each in a child process ------------------------------------------
def run_decode(source: str, store_root: Path, days: int) -> dict[str, Any]:
    """The limit: every row group of the same files decoded on one thread, the same columns,
    into Arrow and nothing further, read the way the loader reads them (each row group's
    ranges fetched together over S3, in place locally, which is the cheaper there)."""
    import pyarrow.parquet as pq

    plan, store = _plan(store_root, days), _store(source, store_root)
    fs, cols, rows = store.arrow_fs(), _columns(plan), 0
    with Meter() as m:
        for part in plan.partitions:
            with fs.open_input_file(store.arrow_path(part.data)) as f:
                pf = pq.ParquetFile(f, metadata=part.footer, pre_buffer=source == "s3")
                for g in range(pf.num_row_groups):
                    rows += pf.read_row_group(g, columns=cols, use_threads=False).num_rows
    return m.result(rows)


def run_read_table(source: str, store_root: Path, days: int) -> dict[str, Any]:
    """`pq.read_table` per file into one preallocated row-major float32 matrix, through one
    preallocated column-major staging buffer (a transposing copy beats strided writes)."""
    import numpy as np
    import pyarrow.parquet as pq

    plan, store = _plan(store_root, days), _store(source, store_root)
    cols, fs = _columns(plan), store.arrow_fs()
    with Meter() as m:
        matrix = np.empty((plan.rows, len(cols)), np.float32)
        stage = np.empty((len(cols), max(p.rows for p in plan.partitions)), np.float32)
        at = 0
        for part in plan.partitions:
            table = pq.read_table(store.arrow_path(part.data), columns=cols, filesystem=fs)
            n = table.num_rows
            for j, name in enumerate(cols):
                stage[j, :n] = table.column(name).to_numpy()
            matrix[at : at + n] = stage[:, :n].T
            at += n
            del table
    return m.result(at)


def run_dataset(source: str, store_root: Path, days: int) -> dict[str, Any]:
    """`pyarrow.dataset` over the files, `to_batches` of the batch size, each batch made
    into float32 `[B, F]` and `[B]` tensors."""
    import numpy as np
    import pyarrow.dataset as pads
    import torch

    plan, store = _plan(store_root, days), _store(source, store_root)
    paths = [store.arrow_path(p.data) for p in plan.partitions]
    rows = 0
    with Meter() as m:
        ds = pads.dataset(paths, format="parquet", filesystem=store.arrow_fs())
        for batch in ds.to_batches(columns=_columns(plan), batch_size=BATCH):
            x = np.column_stack([batch.column(f).to_numpy() for f in plan.features])
            xt, yt = torch.from_numpy(x), torch.from_numpy(batch.column(plan.label).to_numpy())
            rows += len(yt) if len(xt) == len(yt) else 0
    return m.result(rows)


def run_hf(store_root: Path, days: int, scratch: Path) -> dict[str, Any]:
    """Hugging Face `datasets`: `Dataset.from_parquet` (which converts the files into its
    Arrow cache, counted) then one pass of `iter(batch_size)` in its Arrow format into
    float32 tensors. Arrow is the fastest of its formats: its numpy formatter costs about
    13 CPU-s per million rows of these files, ten times the whole of the rest."""
    import numpy as np
    import torch
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    plan, store = _plan(store_root, days), _store("local", store_root)
    files = [str(store.path(p.data)) for p in plan.partitions]
    cache = scratch / f"hf-cache-{os.getpid()}"
    rows = 0
    try:
        with Meter() as m:
            ds = Dataset.from_parquet(files, columns=_columns(plan), cache_dir=str(cache))
            ds = ds.with_format("arrow")
            for batch in ds.iter(batch_size=BATCH):
                x = np.column_stack([batch.column(f).to_numpy() for f in plan.features])
                y = batch.column(plan.label).to_numpy()
                xt, yt = torch.from_numpy(x), torch.from_numpy(y)
                rows += len(yt) if len(xt) == len(yt) else 0
        return m.result(rows)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_iterable(store_root: Path, days: int) -> dict[str, Any]:
    """A torch `IterableDataset` over `ParquetFile.iter_batches`, files split between two
    `DataLoader` workers; their CPU time and memory are counted with the parent's."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    plan, store = _plan(store_root, days), _store("local", store_root)
    files = [str(store.path(p.data)) for p in plan.partitions]
    features, label = list(plan.features), plan.label

    class Batches(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
        def __iter__(self) -> Any:
            info = get_worker_info()
            mine = files if info is None else files[info.id :: info.num_workers]
            for path in mine:
                pf = pq.ParquetFile(path)
                for b in pf.iter_batches(batch_size=BATCH, columns=[*features, label]):
                    x = np.column_stack([b.column(f).to_numpy() for f in features])
                    yield torch.from_numpy(x), torch.from_numpy(b.column(label).to_numpy())

    rows = 0
    with Meter(children=True) as m:
        for _x, y in DataLoader(Batches(), batch_size=None, num_workers=2):
            rows += len(y)
    return m.result(rows)


def run_naive(store_root: Path, days: int, rows: int) -> dict[str, Any]:
    """A per-row `Dataset` over the first `rows` rows in memory, batched by a default
    `DataLoader`; slow, so it reads a slice and its rate stands for the whole."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from torch.utils.data import DataLoader, Dataset

    plan, store = _plan(store_root, days), _store("local", store_root)

    class Rows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __init__(self, table: Any) -> None:
            self.x = np.column_stack([table.column(c).to_numpy() for c in plan.features])
            self.y = table.column(plan.label).to_numpy()

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.tensor(self.x[i]), torch.tensor(self.y[i])

    seen = 0
    with Meter() as m:
        pf = pq.ParquetFile(store.path(plan.partitions[0].data))
        groups = list(range(min(pf.num_row_groups, -(-rows // ROW_GROUP))))
        table = pf.read_row_groups(groups, columns=_columns(plan)).slice(0, rows)
        for _x, y in DataLoader(Rows(table), batch_size=1024, shuffle=True):
            seen += len(y)
    return m.result(seen)


def _settle(device: str) -> None:
    """Wait for the device's queued work, so the clock covers what was delivered."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def run_loader(source: str, store_root: Path, days: int, device: str) -> dict[str, Any]:
    """The streaming loader: one shuffled epoch into tensors on `device`, no cache."""
    from trainer.data.loader import StreamingLoader

    plan, store = _plan(store_root, days), _store(source, store_root)
    loader = StreamingLoader(plan, store, split="train", batch_size=BATCH, device=device)
    rows = 0
    with Meter() as m:
        for _x, y in loader.epoch(0):
            rows += len(y)
        _settle(device)
    return {**m.result(rows), "first_batch_s": loader.stats.first_batch_s}


def run_window(
    source: str, store_root: Path, days: int, window: int, device: str
) -> dict[str, Any]:
    """The streaming loader with windows of `window` rows: one shuffled epoch of
    `[B, window, F]` batches into tensors on `device`, no cache (`rows` counts samples)."""
    from trainer.data.loader import StreamingLoader

    plan, store = _plan(store_root, days), _store(source, store_root)
    loader = StreamingLoader(
        plan, store, split="train", batch_size=BATCH, window=window, device=device
    )
    samples = 0
    with Meter() as m:
        for x, _y in loader.epoch(0):
            samples += len(x) if x.shape[1] == window else 0
        _settle(device)
    return {**m.result(samples), "first_batch_s": loader.stats.first_batch_s}


def run_cache(source: str, store_root: Path, days: int) -> dict[str, Any]:
    """Two shuffled epochs with a cache budget of half the decoded split: the share of the
    second one served from the cache, against the share of the split the cache holds."""
    from trainer.data.loader import BlockCache, StreamingLoader

    plan, store = _plan(store_root, days), _store(source, store_root)
    cache = BlockCache(plan.rows * (len(plan.features) + 2) * 4 // 2)
    loader = StreamingLoader(plan, store, split="train", batch_size=BATCH, cache=cache)
    first = sum(len(y) for _, y in loader.epoch(0))
    with Meter() as m:
        second = sum(len(y) for _, y in loader.epoch(1))
    s = loader.stats
    return {
        **m.result(second),
        "rows_epoch_1": first,
        "share_that_fits": cache.bytes / max(cache.offered_bytes, 1),
        "share_from_cache": s.rows_from_cache / max(s.rows, 1),
        "blocks_kept": len(cache),
        "blocks": len(loader.units),
        "cache_gb": cache.bytes / 1e9,
        "split_gb": cache.offered_bytes / 1e9,
    }


def run_first_step(source: str, store_root: Path, train_days: int) -> dict[str, Any]:
    """The job's own pre-flight and `prepare` (statistics, validation rows, model, loader,
    checkpointer) and its first optimizer step, over `train_days` training days and one
    validation day (always the same one)."""
    import torch

    from trainer.job.identity import resolve
    from trainer.job.prepare import prepare
    from trainer.spec import spec_from_dict
    from trainer.train.distributed import Ranks

    every = dates(31)
    spec = spec_from_dict(spec_dict([*every[:train_days], every[30]], train={"epochs": 1}))
    store = _store(source, store_root)
    # What every job pays once whatever its data (torch's optimizer imports its compiler
    # on first use) is paid before the clock starts, so the figure is the data's alone.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    t0 = time.perf_counter()
    resolved = resolve(spec, store)  # the pre-flight: every meta.json and footer
    job = prepare(resolved.spec, store, resolved.plan, torch.device("cpu"), Ranks(), False)
    prepared = time.perf_counter() - t0
    x, y = next(iter(job.loader.epoch(0)))
    opt = torch.optim.AdamW(job.model.parameters(), lr=1e-3)
    job.loss(job.model(x), y).backward()
    opt.step()
    return {"seconds": time.perf_counter() - t0, "prepare_s": prepared, "rows": 0}


def child(args: argparse.Namespace) -> None:
    root, days, method = Path(args.data) / "store", args.days, args.child
    source = "s3" if method.endswith("-s3") else "local"
    if method == "generate":
        ensure_dataset(Path(args.data), days, args.rows_per_day)
        return
    if method.startswith("decode-"):
        out = run_decode(source, root, days)
    elif method.startswith("read_table-"):
        out = run_read_table(source, root, days)
    elif method.startswith("pyarrow.dataset-"):
        out = run_dataset(source, root, days)
    elif method == "hf-datasets-local":
        out = run_hf(root, days, Path(args.data))
    elif method == "iterable-2-workers-local":
        out = run_iterable(root, days)
    elif method == "naive-local":
        out = run_naive(root, days, args.naive_rows)
    elif method.startswith("loader-"):
        out = run_loader(source, root, days, args.device)
    elif method.startswith("window-"):
        out = run_window(source, root, days, int(method.split("-")[1]), args.device)
    elif method.startswith("cache-"):
        out = run_cache(source, root, days)
    else:
        out = run_first_step(source, root, args.train_days)
    print(json.dumps(out))


# -- the parent: data, endpoint, rounds, report -------------------------------------------------
class Runner:
    def __init__(self, args: argparse.Namespace, data: Path, s3_env: dict[str, str]) -> None:
        self.args, self.data, self.s3_env = args, data, s3_env

    def __call__(self, method: str, days: int, **extra: Any) -> dict[str, Any]:
        a = self.args
        cmd = [sys.executable, __file__, "--child", method, "--data", str(self.data)]
        cmd += ["--days", str(days), "--rows-per-day", str(a.rows_per_day)]
        cmd += ["--naive-rows", str(a.naive_rows), "--device", a.device]
        for key, value in extra.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, **(self.s3_env if method.endswith("-s3") else {})}
        print(f"  {method} ({days} days) ...", file=sys.stderr)
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{method} failed (exit {done.returncode})")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def methods(sources: list[str]) -> list[str]:
    out = []
    for src in sources:
        out += [f"decode-{src}", f"loader-{src}", f"read_table-{src}", f"pyarrow.dataset-{src}"]
    return [*out, "hf-datasets-local", "iterable-2-workers-local", "naive-local"]


def bench_days(run: Runner, days: int, rounds: int, server: Any) -> dict[str, Any]:
    """Every method, `rounds` alternating rounds, at `days` days."""
    order = methods(["local", "s3"])
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in order}
    loads, requests = [], {}
    for r in range(rounds):
        print(f"{days} days, round {r + 1} of {rounds}", file=sys.stderr)
        warm(run.data / "store")
        loads.append(load_average())
        # rotate the order each round, so no method always follows the same one
        for method in order[r % len(order) :] + order[: r % len(order)]:
            server.take_counts()
            runs[method].append(run(method, days))
            if method.startswith("loader-s3"):
                requests = server.take_counts()
    loads.append(load_average())
    # the cache's shares follow from the order alone, not from the load: measured once
    warm(run.data / "store")
    cache = {src: run(f"cache-{src}", days) for src in ("local", "s3")}
    return {
        "days": days,
        "runs": runs,
        "load_average": loads,
        "loader_s3_requests": requests,
        "cache": cache,
    }


def bench_windows(run: Runner, days: int, rounds: int, windows: list[int]) -> dict[str, Any]:
    """The per-row loader and the loader with each window, `rounds` alternating rounds."""
    order = ["loader-local", *(f"window-{w}-local" for w in windows)]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in order}
    loads = []
    for r in range(rounds):
        print(f"windows, {days} days, round {r + 1} of {rounds}", file=sys.stderr)
        warm(run.data / "store")
        loads.append(load_average())
        for method in order[r % len(order) :] + order[: r % len(order)]:
            runs[method].append(run(method, days))
    loads.append(load_average())
    return {"days": days, "runs": runs, "load_average": loads}


def bench_first_step(run: Runner, rounds: int) -> dict[str, Any]:
    """Time to the first step with 1, 10 and 30 training days, local and S3, alternating."""
    out: dict[str, Any] = {"runs": {}, "load_average": []}
    for r in range(rounds):
        warm(run.data / "store")
        out["load_average"].append(load_average())
        for src in ("local", "s3"):
            for n in (1, 10, 30) if r % 2 == 0 else (30, 10, 1):
                key = f"{src}-{n}"
                out["runs"].setdefault(key, []).append(run(f"first-step-{src}", 31, train_days=n))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder to keep the generated dataset in, reused")
    parser.add_argument("--days", default="10,30", help="comma-separated day counts")
    parser.add_argument("--rows-per-day", type=int, default=850_000)
    parser.add_argument("--naive-rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--first-step-rounds", type=int, default=3)
    parser.add_argument("--windows", default="32,128", help="comma-separated window lengths")
    parser.add_argument(
        "--only", choices=["windows"], help="measure the windows against the per-row loader only"
    )
    parser.add_argument(
        "--device", default="cpu", help="where the loaders deliver: cpu, or cuda (windows)"
    )
    parser.add_argument("--train-days", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.days = int(args.days)
        child(args)
        return
    if args.device != "cpu" and args.only != "windows":
        parser.error("--device other than cpu is for --only windows: the peers deliver on the host")
    day_counts = [int(d) for d in args.days.split(",")]
    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="loader-bench-"))
    try:
        # the first-step figures need 31 days; the windows alone, the days they read
        ensure_dataset(data, max(day_counts) if args.only else 31, args.rows_per_day)
        store_root = data / "store"
        from s3_range_server import serve_in_thread

        server = serve_in_thread(store_root)
        s3_env = {**FAKE_AWS, "AWS_ENDPOINT_URL_S3": server.url, "AWS_ENDPOINT_URL": server.url}
        run = Runner(args, data, s3_env)
        result: dict[str, Any] = {
            "started_load_average": load_average(),
            "rows_per_day": args.rows_per_day,
            "device": args.device,
            "by_days": {},
        }

        def save() -> str:
            """The result so far, also to `--out`, so a run cut short keeps what it did."""
            result["summary"] = summary(result, PEERS)
            text = json.dumps(result, indent=2)
            if args.out:
                Path(args.out).write_text(text)
            return text

        windows = [int(w) for w in args.windows.split(",") if w]
        if args.only != "windows":
            for i, days in enumerate(day_counts):
                result["by_days"][str(days)] = bench_days(run, days, args.rounds, server)
                if i == 0:  # after the first day count, so a long second one comes last
                    result["first_step"] = bench_first_step(run, args.first_step_rounds)
                save()
        if windows:
            result["windows"] = bench_windows(run, day_counts[0], args.rounds, windows)
        server.shutdown()
        text = save()
        print(text if args.json else markdown(result["summary"]))
    finally:
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)


def markdown(s: dict[str, Any]) -> str:
    from measure import markdown_summary

    return markdown_summary(s)


if __name__ == "__main__":
    main()
