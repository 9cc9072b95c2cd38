"""`quantlab-train launch SPEC --dry-run`, timed as a user runs it: a fresh process, local
feature files, the offer search answered by the Vast.ai fake on loopback (tests/fakes/).
A spec over 1 day and over 30 days alternate, so load from elsewhere hits both alike.

    python bench/dryrun.py [--data DIR] [--rows-per-day 850000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from dataset import dates, ensure_dataset, spec_dict, warm  # noqa: E402
from measure import bench_cli, load_average, med_best  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from tests.fakes.vast_server import running_fake_vast
    from trainer.launcher.reach import ALLOW_LOCAL_STORE
    from trainer.spec import spec_from_dict

    data = Path(args.data or tempfile.mkdtemp(prefix="dryrun-bench-"))
    store_root = ensure_dataset(data, 31, args.rows_per_day)
    out: dict[str, Any] = {"rounds": {}, "load_average": []}
    with tempfile.TemporaryDirectory() as tmp, running_fake_vast() as fake:
        specs = {}
        for days in (1, 30):
            # `days` training days and the 31st for validation, like bench/loader.py
            every = dates(31)
            raw = spec_dict([*every[:days], every[30]])
            spec_from_dict(raw)  # a valid spec, written as a user writes one (unresolved)
            specs[days] = Path(tmp) / f"spec-{days}.yaml"
            specs[days].write_text(yaml.safe_dump(raw, sort_keys=False))
        # The store is a local folder: opt in, as for local testing (nothing real is rented).
        env = {**os.environ, "VAST_API_KEY": fake.api_key, ALLOW_LOCAL_STORE: "1"}
        for r in range(args.rounds):
            warm(store_root)
            out["load_average"].append(load_average())
            for days in (1, 30) if r % 2 == 0 else (30, 1):
                cmd = [sys.executable, "-m", "trainer", "launch", str(specs[days])]
                cmd += ["--dry-run", "--json", "--vast-url", fake.url]
                cmd += ["--store", f"file://{store_root}"]
                cmd += ["--bad-hosts-file", str(Path(tmp) / "bad-hosts.json")]
                t0 = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - t0
                if done.returncode != 0:
                    raise SystemExit(f"dry run failed ({done.returncode}):\n{done.stderr[-3000:]}")
                out["rounds"].setdefault(str(days), []).append(seconds)
    out["seconds"] = {d: med_best(s, higher_is_better=False) for d, s in out["rounds"].items()}
    return out


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="folder the benchmark dataset is kept in, reused")
    parser.add_argument("--rows-per-day", type=int, default=850_000)


def table(out: dict[str, Any]) -> str:
    lines = ["| spec | launch --dry-run, median | best |", "|---|---:|---:|"]
    for days, s in out["seconds"].items():
        lines.append(
            f"| {days} day(s) + 1 validation day | {s['median']:.1f} s | {s['best']:.1f} s |"
        )
    loads = ", ".join(str(la[0]) for la in out["load_average"])
    return "\n".join([*lines, "", f"Load average (1 min) at each round: {loads}."])


def main() -> None:
    bench_cli(__doc__ or "", options, run, table)


if __name__ == "__main__":
    main()
