"""Small builders shared by tests: specs and generated datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainer.data.synth import SynthConfig, generate
from trainer.spec import JobSpec, spec_from_dict
from trainer.store import ObjectStore
from trainer.store.layout import Layout


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


def cpu_run_args(spec_path: Path, store_root: str) -> list[str]:
    """`trainer run` on the CPU against a store: what the subprocess tests start."""
    return ["trainer", "run", str(spec_path), "--store", store_root, "--device", "cpu"]
