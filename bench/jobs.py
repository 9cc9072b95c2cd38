"""History benchmark: `jobs` over N committed jobs on moto's S3 server, against reading every
job's manifest and spec (what listing the history costs without a per-job summary).

moto runs in a child process, as any S3 endpoint is another process, and is reached over
loopback through the same boto3 code as production. Each job's prefix holds what a committed
job leaves (spec, manifest, summary, model, metrics, log, predictions); the setup is not timed.
Both methods run in alternating rounds; each keeps its best round.

    python bench/jobs.py [--jobs 1000] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
MOTO = (
    "import logging, sys, time\n"
    "logging.getLogger('werkzeug').setLevel(logging.WARNING)\n"
    "from moto.server import ThreadedMotoServer\n"
    "ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False).start()\n"
    "time.sleep(1e9)\n"
)
OTHER_FILES = ("model.bin", "metrics.json", "train.log", "val_predictions.parquet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", MOTO, str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto's server did not start")


def fill(store: Any, n: int) -> None:
    """N committed jobs, as a job leaves them, over a few symbols, tags and days."""
    from tests.helpers import commit_without_training, make_spec
    from trainer.store.layout import Layout

    def one(i: int) -> None:
        symbol = ("btcusdt", "ethusdt", "solusdt")[i % 3]
        spec = make_spec(
            symbols=(symbol,),
            job={"id": f"job-{i:05d}", "name": f"sweep {i}", "tags": [f"batch-{i // 100}"]},
        )
        day = 1 + i % 28
        commit_without_training(
            store,
            spec,
            ic=(i % 97) / 200,
            started_at=f"2026-04-{day:02d}T10:00:00Z",
            ended_at=f"2026-04-{day:02d}T10:{10 + i % 40}:00Z",
        )
        paths = Layout.of(spec.storage).job(spec.job_id)
        for name in OTHER_FILES:
            store.put(paths.file(name), b"x" * 256)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def every_manifest(store: Any) -> int:
    """The baseline: each job's manifest and spec, one after the other."""
    from trainer.spec import parse_spec
    from trainer.store.layout import Layout
    from trainer.store.records import JobManifest, read_record

    layout, found = Layout(), 0
    for job_id in store.children(layout.jobs_root):
        paths = layout.job(job_id)
        manifest = read_record(store, paths.manifest, JobManifest)
        spec = parse_spec(store.get(paths.jobspec).decode(), source=job_id)
        found += manifest is not None and bool(spec.data.symbols)
    return found


def history(store: Any) -> int:
    from trainer.report.history import list_history
    from trainer.store.layout import Layout

    return len(list_history(store, Layout()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    proc, url = start_moto()
    try:
        os.environ.update({**FAKE_AWS, "AWS_ENDPOINT_URL_S3": url, "AWS_ENDPOINT_URL": url})
        import boto3

        from trainer.store import open_store
        from trainer.store.layout import Layout

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=Layout().artifacts_bucket)
        store = open_store("s3://")
        began = time.monotonic()
        fill(store, args.jobs)
        setup_s = time.monotonic() - began
        best: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, method in (("every manifest (baseline)", every_manifest), ("jobs", history)):
                t0 = time.perf_counter()
                counts[name] = method(store)
                took = time.perf_counter() - t0
                best[name] = min(best.get(name, took), took)
    finally:
        proc.kill()
        proc.wait()
    base = best["every manifest (baseline)"]
    result = {
        "jobs": args.jobs,
        "objects": args.jobs * (4 + len(OTHER_FILES)),
        "setup_s": round(setup_s, 1),
        "methods": {
            name: {
                "seconds": round(s, 3),
                "jobs_listed": counts[name],
                "jobs_per_s": round(counts[name] / s),
                "speedup": round(base / s, 2),
            }
            for name, s in best.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.jobs} committed jobs on moto (setup {setup_s:.0f} s, not timed), best of "
        f"{args.rounds} rounds:"
    )
    for name, row in result["methods"].items():  # type: ignore[attr-defined]
        print(
            f"  {name:28} {row['seconds']:7.3f} s  {row['jobs_per_s']:6} jobs/s  "
            f"{row['speedup']:.2f}×  ({row['jobs_listed']} listed)"
        )


if __name__ == "__main__":
    main()
