"""Sweep benchmark: N trials in one CPU process (`run_sweep`) against the same N trial specs
as N separate `quantlab-train run` processes, on moto's S3 server behind a pass-through that
counts the bytes of every GET.

    python bench/sweep.py [--trials 8] [--rounds 2] [--threads 1] [--json]
    python bench/sweep.py --pruning [--json]

Rounds alternate the order (sweep then separate runs, then separate runs then sweep, ...);
each side of a round writes to its own artifacts bucket, so every trial trains and commits.
Reported: the median of the ratios paired within a round beside the ratio of the bests, each
side's wall time (median and best), the feature bytes each read from the store, the time of
each trial inside the sweep, and the load average before and after every round.

`--threads N` runs both sides with `OMP_NUM_THREADS=N` (0: torch's own choice, one thread
per core). `--pruning`: one sweep over a space holding clearly bad learning rates with the
median rule on, reporting the steps pruning saved."""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def base_spec(days: int, eval_every: int = 10_000) -> dict[str, Any]:
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
            "eval_every_steps": eval_every,
            "log_every_steps": 10_000,
            "warmup_steps": 10,
        },
    }


def timing_sweep(args: argparse.Namespace, bucket: str) -> dict[str, Any]:
    """Random over `train.lr` and `model.dropout`, the base writing to `bucket`."""
    base = base_spec(args.days)
    base["storage"] = {"artifacts_bucket": bucket}
    return {
        "sweep": {"id": bucket, "name": "bench"},
        "base": base,
        "space": {
            "train.lr": {"log_uniform": [3e-4, 3e-2]},
            "model.dropout": {"uniform": [0, 0.2]},
        },
        "sampler": "random",
        "seed": 1,
        "trials": args.trials,
    }


def pruning_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Two good learning rates and two hopeless ones, two seeds each, the median rule on."""
    base = base_spec(args.days, eval_every=20)
    base["storage"] = {"artifacts_bucket": "bench-pruning"}
    return {
        "sweep": {"id": "bench-pruning", "name": "bench pruning"},
        "base": base,
        "space": {
            "train.lr": {"choice": [0.003, 1.0e-7, 0.01, 1.0e-8]},
            "train.seed": {"integer": [0, 1]},
        },
        "sampler": "grid",
        "pruning": {"rule": "median", "startup_trials": 2},
    }


# -- the children -----------------------------------------------------------------------------
def child(path: str) -> None:
    """Run the sweep in `path` in this process; print what the parent reports."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from trainer.spec.sweep import sweep_from_dict
    from trainer.store import open_store
    from trainer.store.records import SweepRecord
    from trainer.sweep.run import run_sweep

    started: dict[int, float] = {}
    seconds: dict[int, float] = {}

    def on_change(record: SweepRecord) -> None:
        now = time.perf_counter()
        for t in record.trials:
            started.setdefault(t.number, now)
            if t.state != "running" and t.number not in seconds:
                seconds[t.number] = now - started[t.number]

    sweep = sweep_from_dict(json.loads(Path(path).read_text()))
    t0 = time.perf_counter()
    record = run_sweep(sweep, open_store("s3://"), device="cpu", on_change=on_change).record
    out = {
        "in_process_s": time.perf_counter() - t0,
        "trials": [
            {
                "params": t.params,
                "state": t.state,
                "seconds": round(seconds.get(t.number, float("nan")), 2),
                "steps": t.steps,
                "planned_steps": t.planned_steps,
                "pruned_at_step": t.pruned_at_step,
                "value": t.value,
            }
            for t in record.trials
        ],
        "steps_saved": record.steps_saved,
        "data_reads": record.data_reads,
    }
    print(json.dumps(out))


def trial_params(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The values the sweep's random sampler hands its trials, asked here as the sweep will
    (the random sampler does not depend on the results), so the separate runs can go first."""
    from trainer.spec.sweep import sweep_from_dict
    from trainer.sweep.search import Search

    search = Search(sweep_from_dict(raw))
    return [search.ask().params for _ in range(raw["trials"])]


def trial_files(raw: dict[str, Any], params: list[dict[str, Any]], folder: Path) -> list[Path]:
    """The sweep's trial specs, as files for `quantlab-train run`."""
    from trainer.spec.sweep import sweep_from_dict

    sweep = sweep_from_dict(raw)
    paths = []
    for n, values in enumerate(params):
        path = folder / f"trial-{n}.json"
        path.write_text(json.dumps(sweep.trial_spec(n, values).model_dump(mode="json")))
        paths.append(path)
    return paths


# -- the parent -------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.proc, moto_url = start_moto()
        self.proxy = CountingS3(moto_url)
        env = {**os.environ, **FAKE_AWS, "AWS_ENDPOINT_URL_S3": self.proxy.url}
        env["AWS_ENDPOINT_URL"] = self.proxy.url
        env.pop("AWS_PROFILE", None)
        if args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        self.env = env
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS")})
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=moto_url)

    def close(self) -> None:
        self.proxy.close()
        self.proc.kill()

    def dataset(self) -> int:
        """The dataset both sides read; its Parquet bytes."""
        from trainer.data.synth import SynthConfig, generate_for_spec
        from trainer.spec import spec_from_dict
        from trainer.store import open_store
        from trainer.store.base import Loc
        from trainer.store.layout import Layout

        for bucket in ("quantlab-raw", "quantlab-compact", "quantlab-artifacts"):
            self.s3.create_bucket(Bucket=bucket)
        spec = spec_from_dict(base_spec(self.args.days))
        store = open_store("s3://")
        cfg = SynthConfig(rows_per_day=self.args.rows_per_day, row_group_size=20_000)
        generate_for_spec(store, Layout.of(spec.storage), spec.data, cfg)
        listed = store.list(Loc("quantlab-compact", "features/"))
        return sum(o.size for o in listed if o.loc.key.endswith(".parquet"))

    def _run(self, cmd: list[str], log: Path) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, cwd=HERE.parent, check=False
        )
        log.write_text(done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"{cmd[1:4]} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return done

    def sweep(self, raw: dict[str, Any]) -> dict[str, Any]:
        """One sweep process: its wall time, feature bytes and what the child reported."""
        self.s3.create_bucket(Bucket=raw["base"]["storage"]["artifacts_bucket"])
        path = self.tmp / f"{raw['sweep']['id']}.json"
        path.write_text(json.dumps(raw))
        self.proxy.reset()
        t0 = time.perf_counter()
        done = self._run([sys.executable, __file__, "--child", str(path)], path.with_suffix(".log"))
        wall = time.perf_counter() - t0
        out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        bytes_read = self.proxy.bytes_under(FEATURES)
        return {"seconds": wall, "feature_bytes": bytes_read, "requests": self.requests(), **out}

    def separate(self, raw: dict[str, Any], params: list[dict[str, Any]]) -> dict[str, Any]:
        """The same trials as one `quantlab-train run` process each, one after another."""
        bucket = raw["base"]["storage"]["artifacts_bucket"]
        self.s3.create_bucket(Bucket=bucket)
        folder = self.tmp / bucket
        folder.mkdir()
        self.proxy.reset()
        runs = []
        for path in trial_files(raw, params, folder):
            cmd = [sys.executable, "-m", "trainer", "run", str(path), "--store", "s3://"]
            t0 = time.perf_counter()
            self._run([*cmd, "--device", "cpu"], path.with_suffix(".log"))
            runs.append(time.perf_counter() - t0)
        return {
            "seconds": sum(runs),
            "run_seconds": [round(s, 2) for s in runs],
            "feature_bytes": self.proxy.bytes_under(FEATURES),
            "requests": self.requests(),
        }

    def requests(self) -> dict[str, int]:
        """S3 requests since the last reset, by HTTP method."""
        with self.proxy._lock:
            return dict(self.proxy.requests)

    def round(self, r: int) -> dict[str, Any]:
        raw_sweep = timing_sweep(self.args, f"bench-sweep-{r}")
        raw_runs = timing_sweep(self.args, f"bench-runs-{r}")
        params = trial_params(raw_sweep)
        out: dict[str, Any] = {"order": [], "load_average": {"before": load_average()}}
        for side in ("sweep", "separate") if r % 2 == 0 else ("separate", "sweep"):
            print(f"round {r + 1}: {side} ...", file=sys.stderr)
            out["order"].append(side)
            if side == "sweep":
                out["sweep"] = self.sweep(raw_sweep)
                ran = [t["params"] for t in out["sweep"]["trials"]]
                if ran != params:  # both sides must train the same trials
                    raise SystemExit(f"the sweep ran {ran}, the separate runs {params}")
            else:
                out["separate"] = self.separate(raw_runs, params)
        out["load_average"]["after"] = load_average()
        out["ratio"] = out["sweep"]["seconds"] / out["separate"]["seconds"]
        return out


def timing(args: argparse.Namespace, bench: Bench, parquet: int) -> dict[str, Any]:
    rounds = [bench.round(r) for r in range(args.rounds)]
    sweep_s = [r["sweep"]["seconds"] for r in rounds]
    separate_s = [r["separate"]["seconds"] for r in rounds]
    return {
        "trials": args.trials,
        "threads": args.threads or "torch default",
        "dataset": {"days": args.days, "rows_per_day": args.rows_per_day, "parquet_bytes": parquet},
        "rounds": rounds,
        "sweep_s": {"median": statistics.median(sweep_s), "best": min(sweep_s)},
        "separate_s": {"median": statistics.median(separate_s), "best": min(separate_s)},
        "ratio": {
            "median": statistics.median(r["ratio"] for r in rounds),
            "best": min(sweep_s) / min(separate_s),
        },
        "sweep_feature_bytes": rounds[-1]["sweep"]["feature_bytes"],
        "separate_feature_bytes": rounds[-1]["separate"]["feature_bytes"],
    }


def pruning(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    raw = pruning_sweep(args)
    before = load_average()
    out = bench.sweep(raw)
    trials = out["trials"]
    return {
        "load_average": {"before": before, "after": load_average()},
        "seconds": out["seconds"],
        "trials": trials,
        "steps_trained": sum(t["steps"] or 0 for t in trials),
        "steps_planned": sum(t["planned_steps"] or 0 for t in trials),
        "steps_saved": out["steps_saved"],
    }


def table(result: dict[str, Any]) -> str:
    if "steps_saved" in result:
        lines = [
            f"trial {n}: lr {t['params']['train.lr']:g} seed {t['params']['train.seed']}: "
            f"{t['state']}, {t['steps']} of {t['planned_steps']} steps, {t['seconds']} s"
            for n, t in enumerate(result["trials"])
        ]
        saved = result["steps_saved"]
        lines.append(
            f"pruning saved {saved} of {result['steps_planned']} planned steps "
            f"({100 * saved / max(result['steps_planned'], 1):.0f}%) in {result['seconds']:.1f} s; "
            f"load average {result['load_average']}"
        )
        return "\n".join(lines)
    d = result["dataset"]
    s, p, ratio = result["sweep_s"], result["separate_s"], result["ratio"]
    sb, pb = result["sweep_feature_bytes"], result["separate_feature_bytes"]
    lines = [
        f"{result['trials']} trials, {d['days']} days × {d['rows_per_day']:,} rows "
        f"({d['parquet_bytes'] / 1e6:.1f} MB of Parquet), threads: {result['threads']}",
        "",
        "| method | wall time (median; best) | feature bytes read from the store |",
        "|---|---:|---:|",
        f"| one sweep process (`run_sweep`) | {s['median']:.1f} s; {s['best']:.1f} s "
        f"| {sb / 1e6:.1f} MB |",
        f"| {result['trials']} separate `run`s | {p['median']:.1f} s; {p['best']:.1f} s "
        f"| {pb / 1e6:.1f} MB |",
        f"| ratio | **{ratio['median']:.2f}; {ratio['best']:.2f}** (target at most 0.6) "
        f"| **{sb / max(pb, 1):.3f}** |",
        "",
    ]
    for n, r in enumerate(result["rounds"]):
        per_trial = ", ".join(str(t["seconds"]) for t in r["sweep"]["trials"])
        per_run = ", ".join(map(str, r["separate"]["run_seconds"]))
        load = r["load_average"]
        calls = {side: sum(r[side]["requests"].values()) for side in ("sweep", "separate")}
        lines.append(
            f"round {n + 1} ({' then '.join(r['order'])}): ratio {r['ratio']:.2f}; "
            f"S3 requests: sweep {calls['sweep']}, separate {calls['separate']}; "
            f"sweep {r['sweep']['seconds']:.1f} s (trials {per_trial} s), separate "
            f"{r['separate']['seconds']:.1f} s (runs {per_run} s); "
            f"load average {load['before']} before, {load['after']} after"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--rows-per-day", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=2, help="alternating paired rounds")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both sides")
    ap.add_argument("--pruning", action="store_true", help="the steps pruning saves, instead")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            parquet = bench.dataset()
            result = pruning(bench, args) if args.pruning else timing(args, bench, parquet)
        finally:
            bench.close()
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
