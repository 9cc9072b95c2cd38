"""The benchmarks' synthetic dataset: one symbol, consecutive days from 2025-01-01, generated
once into a folder and reused while its shape is unchanged; and the specs that read it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

FEATURES = 40
ROW_GROUP = 100_000
SYMBOL = "btcusdt"
FORMAT = "bss-zstd-1"
"""Changes whenever the generator writes different files, so an old folder is rebuilt."""


def dates(days: int) -> list[str]:
    """`days` consecutive days from 2025-01-01, `YYYYMMDD`."""
    import datetime as dt

    first = dt.date(2025, 1, 1)
    return [(first + dt.timedelta(days=d)).strftime("%Y%m%d") for d in range(days)]


def ensure_dataset(root: Path, days: int, rows_per_day: int) -> Path:
    """Generate `days` days under `root/store` unless the same dataset is already there;
    returns the store's folder. A dataset of more days serves a smaller ask; a folder
    holding a dataset of another shape is refused, never overwritten."""
    from trainer.data.synth import SynthConfig, generate
    from trainer.store import open_store
    from trainer.store.layout import Layout

    marker = root / "bench-dataset.json"
    want = {"rows_per_day": rows_per_day, "features": FEATURES, "rg": ROW_GROUP, "fmt": FORMAT}
    if marker.exists():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in want} != want:
            raise SystemExit(
                f"{root} holds another benchmark dataset ({have}); give another --data folder"
            )
        if have.get("days", 0) >= days:
            return root / "store"
    shutil.rmtree(root / "store", ignore_errors=True)
    cfg = SynthConfig(rows_per_day=rows_per_day, n_features=FEATURES, row_group_size=ROW_GROUP)
    print(f"generating {days} days x {rows_per_day:,} rows into {root} ...", file=sys.stderr)
    store = open_store(f"file://{root / 'store'}")
    generate(store, Layout(), "binance", "bbo", [SYMBOL], dates(days), cfg)
    marker.write_text(json.dumps({**want, "days": days}))
    return root / "store"


def spec_dict(days: list[str], validation_days: int = 1, **sections: Any) -> dict[str, Any]:
    """A JobSpec over the benchmark dataset's `days` (the last `validation_days` validate)."""
    data = {
        "exchange": "binance",
        "stream": "bbo",
        "symbols": [SYMBOL],
        "dates": {"days": list(days)},
        "split": {"validation_days": validation_days},
        **sections.pop("data", {}),
    }
    return {"data": data, **sections}


def warm(store_root: Path) -> None:
    """Read every feature file once, so that every method finds the same page-cache state
    (a cold read from this disk would measure the disk)."""
    for path in sorted(store_root.rglob("data.parquet")):
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass
