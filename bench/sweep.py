"""Sweep benchmark: 8 trials in one CPU process (`run_sweep`) against the same 8 specs as 8
separate `quantlab-train run` processes, on moto's S3 server behind a pass-through that
counts the bytes of every GET.

    python bench/sweep.py [--trials 8] [--days 4] [--rows-per-day 60000] [--json]

Both sides train the same trial specs (the separate runs write to another artifacts bucket,
so each trains rather than finding the sweep's job done). The sweep pays one interpreter,
one torch import, one pre-flight and one read of the data; each separate run pays all of
them again. Reported: wall time of each side, their ratio (target at most 0.6), and the
feature bytes each read from the store."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from jobs import FAKE_AWS, start_moto  # noqa: E402
from measure import load_average  # noqa: E402

from tests.fakes.s3_counter import CountingS3  # noqa: E402

FEATURES = "quantlab-compact/features/"
SWEEP = """
import json, sys
from trainer.spec.sweep import sweep_from_dict
from trainer.store import open_store
from trainer.sweep.run import run_sweep
sweep = sweep_from_dict(json.loads(sys.argv[1]))
record = run_sweep(sweep, open_store("s3://"), device="cpu").record
print(json.dumps([{"params": t.params, "state": t.state} for t in record.trials]))
"""


def base_spec(days: int) -> dict[str, Any]:
    return {
        "job": {"name": "bench-sweep"},
        "data": {
            "exchange": "binance",
            "stream": "bbo",
            "symbols": ["btcusdt"],
            "dates": {"start": "20251201", "end": f"202512{days:02d}"},
            "split": {"validation_days": 1},
        },
        "model": {"hidden": [64, 32]},
        "train": {
            "epochs": 2,
            "batch_size": 2048,
            "precision": "fp32",
            "eval_every_steps": 10_000,
            "log_every_steps": 10_000,
            "warmup_steps": 10,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--rows-per-day", type=int, default=60_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    proc, moto_url = start_moto()
    proxy = CountingS3(moto_url)
    env = {
        **os.environ,
        **FAKE_AWS,
        "AWS_ENDPOINT_URL_S3": proxy.url,
        "AWS_ENDPOINT_URL": proxy.url,
    }
    env.pop("AWS_PROFILE", None)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS")})
    try:
        import boto3

        from trainer.data.synth import SynthConfig, generate_for_spec
        from trainer.spec import spec_from_dict
        from trainer.store import open_store
        from trainer.store.base import Loc
        from trainer.store.layout import Layout

        s3 = boto3.client("s3", endpoint_url=moto_url)
        for bucket in ("quantlab-raw", "quantlab-compact", "quantlab-artifacts", "bench-runs"):
            s3.create_bucket(Bucket=bucket)
        base = base_spec(args.days)
        spec = spec_from_dict(base)
        store = open_store("s3://")
        cfg = SynthConfig(rows_per_day=args.rows_per_day, row_group_size=20_000)
        generate_for_spec(store, Layout.of(spec.storage), spec.data, cfg)
        listed = store.list(Loc("quantlab-compact", "features/"))
        parquet = sum(o.size for o in listed if o.loc.key.endswith(".parquet"))

        sweep = {
            "sweep": {"id": "bench-sweep", "name": "bench"},
            "base": base,
            "space": {
                "train.lr": {"log_uniform": [3e-4, 3e-2]},
                "model.dropout": {"uniform": [0, 0.2]},
            },
            "sampler": "random",
            "seed": 1,
            "trials": args.trials,
        }
        proxy.reset()
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", SWEEP, json.dumps(sweep)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            cwd=HERE.parent,
        )
        sweep_s = time.perf_counter() - t0
        sweep_bytes = proxy.bytes_under(FEATURES)
        trials = json.loads(out.stdout.strip().splitlines()[-1])

        proxy.reset()
        separate_s = 0.0
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
            for n, trial in enumerate(trials):
                path = Path(tmp) / f"trial-{n}.yaml"
                raw = json.loads(json.dumps(base))
                raw["storage"] = {"artifacts_bucket": "bench-runs"}
                for key, value in trial["params"].items():
                    section, field = key.split(".", 1)
                    raw.setdefault(section, {})[field] = value
                path.write_text(json.dumps(raw))
                t0 = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "trainer",
                        "run",
                        str(path),
                        "--store",
                        "s3://",
                        "--device",
                        "cpu",
                    ],
                    env=env,
                    check=True,
                    capture_output=True,
                    cwd=HERE.parent,
                )
                separate_s += time.perf_counter() - t0
        separate_bytes = proxy.bytes_under(FEATURES)
    finally:
        proxy.close()
        proc.kill()

    result = {
        "trials": args.trials,
        "dataset": {"days": args.days, "rows_per_day": args.rows_per_day, "parquet_bytes": parquet},
        "sweep_s": round(sweep_s, 2),
        "separate_s": round(separate_s, 2),
        "ratio": round(sweep_s / separate_s, 3),
        "sweep_feature_bytes": sweep_bytes,
        "separate_feature_bytes": separate_bytes,
        "load_average": load_average(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.trials} trials, {args.days} days × {args.rows_per_day:,} rows "
        f"({parquet / 1e6:.1f} MB of Parquet); load average {result['load_average']}\n"
        f"  one sweep process:   {sweep_s:7.1f} s, {sweep_bytes / 1e6:7.1f} MB of features read\n"
        f"  {args.trials} separate runs:     {separate_s:7.1f} s, "
        f"{separate_bytes / 1e6:7.1f} MB of features read\n"
        f"  wall-time ratio {result['ratio']:.2f} (target at most 0.6), "
        f"bytes ratio {sweep_bytes / max(separate_bytes, 1):.3f}"
    )


if __name__ == "__main__":
    main()
