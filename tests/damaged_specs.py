"""Damaged specs for the property suite: one field in range, out of range, of the wrong
type, not finite or not YAML; or a value that only the data shows wrong."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.damaged_data import EXIT_DATA, EXIT_SPEC, FEATURES, Damage, Dataset

NOT_YAML = (
    "[1",
    "*a",
    "\t",
    "!!python/object/apply:os.system ['true']",
    "{a: 1",
    "'open",
    "a: b: c",
    "!!binary zz",
)
NOT_A_NUMBER = ("abc", "[1]", "{a: 1}", "''")
NON_FINITE = (".nan", ".inf", "-.inf", ".NaN")
BAD_FRACTIONS = ("0", "1", "-0.5", ".nan", "2")
CENTURIES_AGO = ("10000101", "19000101", "16000229")


@dataclass(frozen=True)
class Field:
    path: str
    valid: st.SearchStrategy[str]
    """YAML text of values that must be accepted (and then train)."""
    invalid: tuple[str, ...]
    """YAML text of values that must be refused by name."""
    codes: frozenset[int] = frozenset({EXIT_SPEC})


def _floats(lo: float, hi: float) -> st.SearchStrategy[str]:
    return st.floats(lo, hi, allow_nan=False).map(repr)


def _ints(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(str)


FIELDS = (
    Field("train.lr", _floats(1e-4, 0.05), ("0", "-1", "11", "1e400", *NON_FINITE, *NOT_A_NUMBER)),
    Field("train.batch_size", _ints(64, 256), ("0", "-5", "2097152", "1.5", *NOT_A_NUMBER)),
    Field("train.epochs", _ints(1, 2), ("0", "-1", "2.5", *NOT_A_NUMBER)),
    Field("train.weight_decay", _floats(0, 1), ("-0.1", "1.5", *NON_FINITE, *NOT_A_NUMBER)),
    Field("train.seed", _ints(0, 2**63 - 1), ("-1", str(2**63), str(2**64), str(10**30))),
    Field("train.grad_clip", _floats(0.1, 10) | st.just("null"), ("0", "-1", *NON_FINITE)),
    Field("train.warmup_steps", _ints(0, 20), ("-1", ".inf", *NOT_A_NUMBER)),
    Field("train.early_stopping.min_delta", _floats(0, 1), ("-1", *NON_FINITE, "1e7")),
    Field("model.dropout", _floats(0, 0.5), ("1", "-0.1", *NON_FINITE)),
    Field("promotion.min_ic", _floats(-1, 1) | st.just("null"), ("1.5", "-2", *NON_FINITE)),
    Field("promotion.max_ic_drop", _floats(0, 2), ("-1", "3", *NON_FINITE)),
    Field("limits.max_cost_usd", _floats(1, 1000), ("0", "-1", "1e9", *NON_FINITE)),
    Field("limits.max_runtime_minutes", _floats(1, 1000), ("0", "1e9", *NON_FINITE)),
    Field("data.split.purge_sec", _ints(0, 3600), ("-1", "2.5", *NOT_A_NUMBER)),
    Field("data.cache_gb", _floats(0, 1) | st.just("null"), ("-1", *NON_FINITE)),
    Field("job.name", st.sampled_from(["a", "'x y'"]), ("[1]", "{a: 1}")),
    Field(
        "job.id",
        st.sampled_from(["job-a", "b.c_d"]),
        ("../x", "a..b", "x/y", "UPPER", "''", "'.hidden'", "'a b'", "'-x'", "[1]"),
    ),
)


@st.composite
def spec_damages(draw: st.DrawFn, ds: Dataset) -> Damage:
    """One spec field set to a value in range, out of range, of the wrong type, not finite,
    or not YAML at all; or a damage that needs the data to be seen (a purge longer than the
    span, a split with no training day, a column or symbol the data lacks, dates outside it)."""
    kind = draw(st.sampled_from(["field", "data-bound"]))
    if kind == "field":
        f = draw(st.sampled_from(FIELDS))
        choice = draw(st.sampled_from(["valid", "invalid", "invalid", "not yaml"]))
        if choice == "valid":
            return Damage(
                "spec: value in range",
                "accept",
                (),
                frozenset(),
                overrides=(f"{f.path}={draw(f.valid)}",),
            )
        text = draw(st.sampled_from(f.invalid if choice == "invalid" else NOT_YAML))
        via_file = choice == "invalid" and draw(st.booleans())
        what = "spec: not YAML" if choice == "not yaml" else "spec: out of range or wrong type"
        if via_file:
            value = yaml.safe_load(text)
            return Damage(
                what,
                "refuse",
                (f.path,),
                f.codes,
                spec_change=lambda raw: set_path(raw, f.path, value),
            )
        return Damage(what, "refuse", (f.path,), f.codes, overrides=(f"{f.path}={text}",))
    n = len(ds.dates)
    last = dt.datetime.strptime(ds.dates[-1], "%Y%m%d")
    later = (last + dt.timedelta(days=draw(st.integers(1, 20)))).strftime("%Y%m%d")
    options: list[Damage] = [
        Damage(
            "spec: purge longer than the training span",
            "refuse",
            ("data.split.purge_sec",),
            frozenset({EXIT_SPEC, EXIT_DATA}),
            overrides=(f"data.split.purge_sec={draw(st.integers(n * 86_400, 10**9))}",),
        ),
        Damage(
            "spec: validation_days leaves no training day",
            "refuse",
            ("data.split.validation_days",),
            frozenset({EXIT_SPEC, EXIT_DATA}),
            overrides=(f"data.split.validation_days={draw(st.integers(n, 10**6))}",),
        ),
        Damage(
            "spec: validation days in range",
            "accept",
            (),
            frozenset(),
            overrides=(f"data.split.validation_days={draw(st.integers(1, n - 1))}",),
        ),
        Damage(
            "spec: validation fraction in range",
            "accept",
            (),
            frozenset(),
            overrides=(
                "data.split.validation_days=null",
                f"data.split.validation_fraction={draw(st.floats(0.15, 0.6)):.3f}",
            ),
        ),
        Damage(
            "spec: validation fraction out of range",
            "refuse",
            ("data.split.validation_fraction",),
            frozenset({EXIT_SPEC}),
            overrides=(
                "data.split.validation_days=null",
                f"data.split.validation_fraction={draw(st.sampled_from(BAD_FRACTIONS))}",
            ),
        ),
        Damage(
            "spec: a feature subset",
            "accept",
            (),
            frozenset(),
            overrides=(f"data.features=[{', '.join(FEATURES[: draw(st.integers(1, 3))])}]",),
        ),
        Damage(
            "spec: no feature",
            "refuse",
            ("data.features",),
            frozenset({EXIT_SPEC}),
            overrides=("data.features=[]",),
        ),
        Damage(
            "spec: a feature twice",
            "refuse",
            ("data.features",),
            frozenset({EXIT_SPEC}),
            overrides=("data.features=[f0, f1, f0]",),
        ),
        Damage(
            "spec: a column the data lacks",
            "refuse",
            ("nope",),
            frozenset({EXIT_DATA}),
            overrides=("data.features=[f0, nope]",),
        ),
        Damage(
            "spec: a symbol twice",
            "refuse",
            ("data.symbols", "btcusdt"),
            frozenset({EXIT_SPEC}),
            overrides=("data.symbols=[btcusdt, btcusdt]",),
        ),
        Damage(
            "spec: a symbol with no data",
            "refuse",
            ("xrpusdt",),
            frozenset({EXIT_DATA}),
            overrides=("data.symbols=[btcusdt, xrpusdt]",),
        ),
        Damage(
            "spec: a path-like symbol",
            "refuse",
            ("data.symbols",),
            frozenset({EXIT_SPEC}),
            overrides=(f"data.symbols=[{draw(st.sampled_from(['../x', 'a/b', 'BTC', '.']))}]",),
        ),
        Damage(
            "spec: dates past the data",
            "refuse",
            ("date=2025", "date 2025", "2025"),
            frozenset({EXIT_DATA}),
            overrides=(f'data.dates.end="{later}"',),
        ),
        Damage(
            "spec: a span of centuries",
            "refuse",
            ("data.dates",),
            frozenset({EXIT_SPEC}),
            overrides=(f'data.dates.start="{draw(st.sampled_from(CENTURIES_AGO))}"',),
        ),
        Damage(
            "spec: end before start",
            "refuse",
            ("data.dates",),
            frozenset({EXIT_SPEC}),
            overrides=('data.dates.end="20251101"',),
        ),
    ]
    return draw(st.sampled_from(options))


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    node = raw
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def base_spec(ds: Dataset) -> dict[str, Any]:
    return {
        "data": {
            "exchange": "binance",
            "stream": "bbo",
            "symbols": list(ds.symbols),
            "dates": {"start": ds.dates[0], "end": ds.dates[-1]},
            "split": {"validation_days": 1},
            "cache_gb": 0.05,
        },
        "model": {"hidden": [4]},
        "train": {
            "epochs": 1,
            "batch_size": 128,
            "lr": 0.003,
            "warmup_steps": 0,
            "precision": "fp32",
            "eval_every_steps": 1000,
            "log_every_steps": 1000,
            "checkpoint": {"every_minutes": None},
        },
    }
