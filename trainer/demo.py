"""`quantlab-train demo`: the whole job on this machine, no account, key or GPU needed."""

from __future__ import annotations

import tempfile
from pathlib import Path

from trainer.artifacts import verify
from trainer.job import JobResult, run_job
from trainer.layout import Layout, Partition
from trainer.spec import JobSpec, spec_from_dict
from trainer.storage import open_store
from trainer.synth import SynthConfig, generate

DEFAULT_ROOT = Path(".quantlab/store")
DEMO_DATA = SynthConfig(rows_per_day=30_000, n_features=12, row_group_size=7_500)


def demo_spec() -> JobSpec:
    """Four days of generated BTC/USDT features, the last one held out; a small MLP."""
    return spec_from_dict(
        {
            "job": {"name": "demo", "tags": ["demo"]},
            "data": {
                "exchange": "binance",
                "stream": "bbo",
                "symbols": ["btcusdt"],
                "dates": {"start": "20251201", "end": "20251204"},
                "split": {"validation_days": 1},
            },
            "model": {"hidden": [64, 32]},
            "train": {
                "epochs": 2,
                "batch_size": 1024,
                "lr": 0.003,
                "warmup_steps": 20,
                "precision": "fp32",
                "eval_every_steps": 50,
                "log_every_steps": 25,
            },
        },
        source="demo spec",
    )


def run_demo(root: Path = DEFAULT_ROOT) -> tuple[JobResult, dict[str, object]]:
    """Generate the dataset (once) into a local store at `root`, train on CPU, commit and
    verify the artifacts. Returns the job result and the verified manifest."""
    spec = demo_spec()
    store = open_store(f"file://{root.resolve()}", read_only_buckets=[spec.storage.raw_bucket])
    layout = Layout(spec.storage)
    d = spec.data
    first = Partition(d.exchange, d.stream, d.symbols[0], d.dates.resolve()[-1])
    if not store.exists(layout.feature_meta(first)):
        generate(store, layout, d.exchange, d.stream, d.symbols, d.dates.resolve(), DEMO_DATA)
    result = run_job(spec, store, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = verify(store, layout, result.job_id, Path(tmp))
    return result, manifest
