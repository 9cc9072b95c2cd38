"""Synthetic BBO feature partitions in the storage layout, with a known, learnable label signal."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.spec.dates import day_bounds_ms
from trainer.spec.sections import DataSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout, Partition

GENERATOR = "synthetic-bbo-v1"
SIGNAL_FEATURE = "imbalance_l1"
_NAMED = (
    SIGNAL_FEATURE,
    "spread_bps",
    "ret_1s",
    "ret_10s",
    "ret_60s",
    "vol_60s",
    "bid_size_l1",
    "ask_size_l1",
    "trade_flow_10s",
)


@dataclass(frozen=True)
class SynthConfig:
    """What the generator writes; everything but `seed` goes into `config_hash`."""

    rows_per_day: int = 20_000
    n_features: int = 12
    label_horizon_sec: int = 10
    row_group_size: int = 5_000
    signal_ic: float = 0.35
    """Pearson correlation of the label with `imbalance_l1`: the best a model can reach."""
    signal_lag: int = 0
    """Rows back the signal sits: 0, the label follows the row's own `imbalance_l1`; N > 0,
    it follows the `imbalance_l1` of the row N rows earlier in the same partition, which no
    single row carries, so only a window of more than N rows can learn it (the first N rows
    of each day have no label)."""
    feature_nan_rate: float = 0.0005
    """Share of rows with one NaN feature, as real feeds have after gaps."""
    compression: str = "zstd"
    seed: int = 0

    @property
    def feature_names(self) -> tuple[str, ...]:
        extra = tuple(f"f{i:02d}" for i in range(len(_NAMED), self.n_features))
        return (_NAMED + extra)[: self.n_features]

    @property
    def config_hash(self) -> str:
        body = {
            "generator": GENERATOR,
            "features": self.feature_names,
            "label_horizon_sec": self.label_horizon_sec,
            "signal_ic": self.signal_ic,
        }
        if self.signal_lag:  # only when set: datasets written before it keep their hash
            body["signal_lag"] = self.signal_lag
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def make_day(symbol: str, date: str, cfg: SynthConfig) -> pa.Table:
    """One day of one symbol: `ts` (ms), the features, `label` (forward return, bps).

    The label is `signal_ic`-correlated with `imbalance_l1` (`signal_lag` rows back) and
    independent of every other feature; its last `label_horizon_sec` seconds are NaN, since
    their forward window is empty.
    """
    seed = int(hashlib.sha256(f"{cfg.seed}/{symbol}/{date}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    n = cfg.rows_per_day
    first, last = day_bounds_ms(date)
    ts = np.sort(rng.integers(first, last + 1, size=n, dtype=np.int64))

    cols: dict[str, np.ndarray] = {}
    signal = rng.standard_normal(n)
    cols[SIGNAL_FEATURE] = np.tanh(0.6 * signal)  # bounded, like a real imbalance in [-1, 1]
    for name in cfg.feature_names[1:]:
        raw = rng.standard_normal(n)
        if name == "spread_bps":
            raw = 1.5 + np.abs(raw)
        elif name.endswith("size_l1"):
            raw = np.exp(7.0 + 0.5 * raw)  # thousands, log-normal: normalization matters
        elif name == "vol_60s":
            raw = 0.02 * np.exp(0.3 * raw)
        cols[name] = raw

    # Scale noise so corr(label, imbalance_l1) == signal_ic exactly in expectation.
    x = cols[SIGNAL_FEATURE]
    x_std = float(np.std(x))
    noise_scale = x_std * np.sqrt(1.0 / cfg.signal_ic**2 - 1.0)
    lag = cfg.signal_lag
    driver = x if lag == 0 else np.concatenate([np.full(min(lag, n), np.nan), x[: n - lag]])
    label = 5.0 * (driver + noise_scale * rng.standard_normal(n))
    label[ts > last - cfg.label_horizon_sec * 1000] = np.nan

    if cfg.feature_nan_rate > 0:
        hit = rng.random(n) < cfg.feature_nan_rate
        victim = rng.integers(1, cfg.n_features, size=n) if cfg.n_features > 1 else 0
        for j, name in enumerate(cfg.feature_names):
            if j > 0:
                cols[name][hit & (victim == j)] = np.nan

    arrays = {"ts": pa.array(ts, pa.int64())}
    for name in cfg.feature_names:
        arrays[name] = pa.array(cols[name].astype(np.float32))
    arrays["label"] = pa.array(label.astype(np.float32))
    return pa.table(arrays)


def meta_for(table: pa.Table, symbol: str, date: str, cfg: SynthConfig) -> dict[str, object]:
    ts = table.column("ts").to_numpy()
    return {
        "featureset_version": "v1",
        "symbol": symbol,
        "date": date,
        "rows": table.num_rows,
        "ts_min": int(ts.min()),
        "ts_max": int(ts.max()),
        "label_horizon_sec": cfg.label_horizon_sec,
        "config_hash": cfg.config_hash,
    }


def column_encodings(schema: pa.Schema) -> dict[str, str]:
    """Parquet encodings for feature files: byte-stream split for floats, delta for integers
    (sorted timestamps), never a dictionary.

    Market features are almost all distinct values, so a dictionary never pays: the writer
    fills a dictionary page, gives up, and falls back to plain, and the file ends up larger
    than the raw floats (1.44x for one synthetic day), slower to decode too. Byte-stream
    split puts each float's exponent bytes together, which zstd then compresses (0.93x raw
    here; more on real features, whose values carry fewer significant digits)."""
    out = {}
    for f in schema:
        if pa.types.is_floating(f.type):
            out[f.name] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_integer(f.type):
            out[f.name] = "DELTA_BINARY_PACKED"
    return out


def write_partition(
    store: ObjectStore,
    layout: Layout,
    part: Partition,
    table: pa.Table,
    meta: dict[str, object],
    cfg: SynthConfig,
) -> None:
    """`data.parquet` first, `meta.json` last: a leaf with its meta is a complete leaf."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        pq.write_table(
            table,
            path,
            row_group_size=cfg.row_group_size,
            compression=cfg.compression,
            use_dictionary=False,
            column_encoding=column_encodings(table.schema),
        )
        store.upload(layout.feature_data(part), path)
    store.put(layout.feature_meta(part), json.dumps(meta, indent=2).encode())


def generate(
    store: ObjectStore,
    layout: Layout,
    exchange: str,
    stream: str,
    symbols: Sequence[str],
    dates: Sequence[str],
    cfg: SynthConfig | None = None,
) -> list[Partition]:
    """Write one feature partition per symbol and date; returns what was written."""
    cfg = cfg or SynthConfig()
    written = []
    for symbol in symbols:
        for date in dates:
            part = Partition(exchange, stream, symbol, date)
            table = make_day(symbol, date, cfg)
            write_partition(store, layout, part, table, meta_for(table, symbol, date, cfg), cfg)
            written.append(part)
    return written


def generate_for_spec(
    store: ObjectStore, layout: Layout, data: DataSpec, cfg: SynthConfig | None = None
) -> list[Partition]:
    """Write synthetic partitions for every symbol and date a spec's `data` section names."""
    return generate(
        store, layout, data.exchange, data.stream, data.symbols, data.dates.resolve(), cfg
    )
