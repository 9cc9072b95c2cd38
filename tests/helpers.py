"""Small builders shared by tests and benchmarks: specs, generated datasets, committed jobs,
and `model.bin` run by a bare interpreter."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from trainer.data.plan import DatasetPlan
from trainer.data.synth import SynthConfig, generate, make_day, meta_for, write_partition
from trainer.job.summary import record_commit
from trainer.spec import JobSpec, dump_spec, spec_from_dict
from trainer.store import ObjectStore
from trainer.store.layout import Layout, Partition
from trainer.store.records import (
    DatasetRef,
    EvalMetrics,
    FileEntry,
    JobManifest,
    JobMetrics,
    ModelRef,
    write_record,
)


class Quiet:
    """A progress sink for `train.loop.fit` that keeps nothing."""

    def on_step(self, record: dict[str, float]) -> None:
        pass

    def on_eval(self, record: dict[str, float]) -> None:
        pass


def spec_dict(
    dates: tuple[str, str] = ("20251201", "20251203"),
    symbols: tuple[str, ...] = ("btcusdt",),
    **sections: dict[str, Any],
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "data": {
            "exchange": "binance",
            "stream": "bbo",
            "symbols": list(symbols),
            "dates": {"start": dates[0], "end": dates[1]},
            "split": {"validation_days": 1},
        },
        "model": {"hidden": [32, 16]},
        "train": {
            "epochs": 2,
            "batch_size": 512,
            "lr": 0.003,
            "warmup_steps": 10,
            "precision": "fp32",
            "eval_every_steps": 50,
            "log_every_steps": 25,
        },
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def make_spec(**kwargs: Any) -> JobSpec:
    return spec_from_dict(spec_dict(**kwargs))


def write_spec(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_dataset(store: ObjectStore, spec: JobSpec, cfg: SynthConfig | None = None) -> SynthConfig:
    cfg = cfg or SynthConfig(rows_per_day=6_000, row_group_size=1_500)
    d = spec.data
    layout = Layout.of(spec.storage)
    generate(store, layout, d.exchange, d.stream, d.symbols, d.dates.resolve(), cfg)
    return cfg


def cli(*args: str) -> tuple[int, str]:
    """`quantlab-train ARGS` in this process: the exit code, and stdout and stderr together."""
    from trainer.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


def cpu_run_args(spec_path: Path, store_root: str) -> list[str]:
    """`trainer run` on the CPU against a store: what the subprocess tests start."""
    return ["trainer", "run", str(spec_path), "--store", store_root, "--device", "cpu"]


def commit_without_training(
    store: ObjectStore,
    spec: JobSpec,
    *,
    ic: float,
    started_at: str = "2026-05-01T10:00:00Z",
    ended_at: str = "2026-05-01T10:30:00Z",
    val_loss: float = 1.0,
) -> JobManifest:
    """A committed job as the job leaves it (spec, manifest, then its history entry), with the
    given metrics and no training: for tests and benchmarks of what reads the history."""
    paths = Layout.of(spec.storage).job(spec.job_id)
    store.put(paths.jobspec, dump_spec(spec).encode())
    final = EvalMetrics(val_loss=val_loss, loss=val_loss, ic=ic, rank_ic=ic * 0.9,
                        hit_rate=0.5 + ic / 4, rows=1_000)  # fmt: skip
    metrics = JobMetrics(
        final=final, best=None, best_step=100, steps=100, rows_seen=50_000, stopped_early=False,
        train_seconds=60.0, rows_dropped_non_finite=0, history=(), rows_seen_all_ranks=50_000,
        world_size=1, resumed_from_step=None, checkpoints=(),
    )  # fmt: skip
    manifest = JobManifest(
        job_id=spec.job_id, started_at=started_at, ended_at=ended_at, committed_at=ended_at,
        code_version="test", device="cpu", dataset=DatasetRef(config_hash="c", featureset="v1"),
        model=ModelRef(format="test", features=("f0",), label="label"), metrics=metrics,
        files=(FileEntry(name=paths.JOBSPEC, size=0, sha256="0" * 64),),
    )  # fmt: skip
    write_record(store, paths.manifest, manifest, if_absent=True)
    record_commit(store, paths, spec, manifest)
    return manifest


def write_day(
    store: ObjectStore,
    layout: Layout,
    part: Partition,
    cfg: SynthConfig,
    change: Callable[[pa.Table], dict[str, np.ndarray]] | None = None,
    table: pa.Table | None = None,
) -> pa.Table:
    """Write one partition: `table`, or the generated day with the columns that `change`
    returns put in place of the generated ones."""
    if table is None:
        table = make_day(part.symbol, part.date, cfg)
    for name, values in (change(table) if change else {}).items():
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    write_partition(store, layout, part, table, meta_for(table, part.symbol, part.date, cfg), cfg)
    return table


LOAD_IN_BARE_PYTHON = textwrap.dedent(
    """
    import sys, json
    for name in ["trainer", *sys.argv[3:]]:  # the project (and the model's code) not needed
        sys.modules[name] = None
    import numpy as np, pyarrow.parquet as pq, torch
    path, x_path = sys.argv[1], sys.argv[2]
    extra = {"quantlab.json": ""}
    with open(path, "rb") as f:
        program = torch.export.load(f, extra_files=extra)
    meta = json.loads(extra["quantlab.json"])
    x = torch.from_numpy(np.load(x_path))
    pred = program.module()(x).detach().numpy()
    np.save(x_path + ".pred.npy", pred)
    print(json.dumps(meta))
    """
)


def predict_in_bare_python(
    model_bin: Path, x: np.ndarray, tmp: Path, *blocked: str
) -> tuple[dict[str, Any], np.ndarray]:
    """`model.bin` loaded and run on `x` by an isolated interpreter that cannot import the
    project nor any module in `blocked`: its metadata and predictions."""
    np.save(tmp / "x.npy", x)
    script = tmp / "load.py"
    script.write_text(LOAD_IN_BARE_PYTHON)
    out = subprocess.run(
        [sys.executable, "-I", str(script), str(model_bin), str(tmp / "x.npy"), *blocked],
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), np.load(tmp / "x.npy.pred.npy")


def job_predictions(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """`(ts, prediction)` from a job's `val_predictions.parquet`."""
    table = pq.read_table(folder / "val_predictions.parquet")
    return table.column("ts").to_numpy(), table.column("prediction").to_numpy()


def nan_rows(table: pa.Table, column: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """`column` of `table` with rows `[start, stop)` NaN (a `write_day` change): a row group
    with no usable row."""
    values = table.column(column).to_numpy(zero_copy_only=False).copy()
    values[start:stop] = np.nan
    return {column: values}


def recount(store: ObjectStore, plan: DatasetPlan) -> dict[str, int]:
    """The rows of each split, counted with plain pyarrow and numpy over every partition:
    finite rows before the training end and from the validation start."""
    fs = store.arrow_fs()
    out = {"train": 0, "val": 0, "train_rows": 0, "val_rows": 0}
    for info in plan.partitions:
        table = pq.read_table(store.arrow_path(info.data), filesystem=fs)
        ts = table.column(plan.timestamp).to_numpy()
        cols = [*plan.features, plan.label]
        values = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in cols])
        finite = np.isfinite(values).all(axis=1)
        train, val = ts < plan.bounds.train_end_ms, ts >= plan.bounds.val_start_ms
        out["train"] += int((train & finite).sum())
        out["val"] += int((val & finite).sum())
        out["train_rows"] += int(train.sum())
        out["val_rows"] += int(val.sum())
    return out
