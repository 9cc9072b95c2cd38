"""The CLI and the published JSON Schema give every document the same verdict: the shipped
specs, and near misses of each type rule (booleans, numbers, days, lists, sections, keys,
ranges). The schema side reads the YAML with ruamel.yaml, a YAML 1.2 reader of its own, as an
editor would, and validates with jsonschema; the CLI side is the loader `validate` uses."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from tests.launcher_env import run_cli
from trainer.errors import EXIT_SPEC, SpecError
from trainer.spec import load_spec, parse_spec
from trainer.spec.docs import json_schema
from trainer.spec.sweep import parse_sweep

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(
    p
    for folder in ("jobspecs", "examples")
    for p in (ROOT / folder).rglob("*.yaml")
    if "sweeps" not in p.parts
)
SHIPPED_SWEEPS = sorted((ROOT / "jobspecs" / "sweeps").glob("*.yaml"))

JOB_SCHEMA = jsonschema.Draft202012Validator(json.loads(json_schema()))
SWEEP_SCHEMA = jsonschema.Draft202012Validator(json.loads(json_schema(sweep=True)))
PYDANTIC_WORDS = (
    "Input should",
    "valid tuple",
    "valid string",
    "valid dictionary",
    "valid boolean",
    "valid integer",
    "valid number",
    "instance of",
    "after validation",
    "Tuple should",
    "String should",
    "List should",
    "Dictionary should",
    "must match pattern",
)


def _editor_reads(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(StringIO(text))


def doc(
    extra: str = "",
    symbols: str = "[btcusdt]",
    dates: str = '{start: "20251201", end: "20251203"}',
    data: str = "",
) -> str:
    return (
        "data:\n  exchange: binance\n  stream: bbo\n"
        f"  symbols: {symbols}\n  dates: {dates}\n{data}{extra}"
    )


# (case id, document, valid?)
NEAR_MISSES = [
    ("minimal", doc(), True),
    ("interruptible-yes", doc("resources: {interruptible: yes}\n"), False),
    ("interruptible-on", doc("resources: {interruptible: on}\n"), False),
    ("interruptible-quoted-true", doc('resources: {interruptible: "true"}\n'), False),
    ("interruptible-one", doc("resources: {interruptible: 1}\n"), False),
    ("interruptible-true", doc("resources: {interruptible: true}\n"), True),
    ("promotion-auto-no", doc("promotion: {auto: no}\n"), False),
    ("lr-quoted", doc('train: {lr: "0.001"}\n'), False),
    ("lr-exponent", doc("train: {lr: 1e-3}\n"), True),
    ("lr-integer", doc("train: {lr: 1}\n"), True),
    ("lr-true", doc("train: {lr: true}\n"), False),
    ("epochs-quoted", doc('train: {epochs: "3"}\n'), False),
    ("epochs-whole-float", doc("train: {epochs: 3.0}\n"), True),
    ("batch-size-fraction", doc("train: {batch_size: 1024.5}\n"), False),
    ("epochs-null-with-steps", doc("train: {epochs: null, max_steps: 10}\n"), True),
    ("start-unquoted-number", doc(dates="{start: 20251201, end: 20251203}"), False),
    ("start-unquoted-iso", doc(dates="{start: 2025-12-01, end: 2025-12-03}"), False),
    ("start-quoted-iso", doc(dates='{start: "2025-12-01", end: "2025-12-03"}'), False),
    ("start-month-13", doc(dates='{start: "20251301", end: "20251302"}'), False),
    ("start-february-30", doc(dates='{start: "20250230", end: "20250301"}'), False),
    ("day-leap", doc(dates='{days: ["20240229"]}'), True),
    ("day-not-leap", doc(dates='{days: ["20250229"]}'), False),
    ("day-unquoted", doc(dates="{days: [20251201]}"), False),
    ("day-padded", doc(dates='{days: [" 20251201"]}'), False),
    ("symbols-empty", doc(symbols="[]"), False),
    ("symbols-not-a-list", doc(symbols="btcusdt"), False),
    ("symbols-upper-case", doc(symbols="[BTCUSDT]"), False),
    ("symbols-twice", doc(symbols="[btcusdt, btcusdt]"), False),
    ("symbols-number", doc(symbols="[1]"), False),
    ("features-empty", doc(data="  features: []\n"), False),
    ("features-auto", doc(data="  features: auto\n"), True),
    ("features-text", doc(data="  features: all\n"), False),
    ("features-twice", doc(data="  features: [f1, f1]\n"), False),
    ("gpu-names-empty", doc("resources: {gpu_names: []}\n"), False),
    ("hidden-empty", doc("model: {hidden: []}\n"), True),
    ("hidden-zero-width", doc("model: {hidden: [64, 0]}\n"), False),
    ("hidden-not-a-list", doc("model: {hidden: 64}\n"), False),
    ("tags-numbers", doc("job: {tags: [1, 2]}\n"), False),
    ("name-number", doc("job: {name: 5}\n"), False),
    ("job-id-upper-case", doc("job: {id: My_Run}\n"), False),
    ("lr-at-top-level", doc("lr: 0.001\n"), False),
    ("lr-under-data", doc(data="  lr: 0.001\n"), False),
    ("train-as-list", doc("train: [lr, 0.001]\n"), False),
    ("train-as-text", doc("train: fast\n"), False),
    ("model-null", doc("model: null\n"), False),
    ("unknown-key-typo", doc("train: {bacth_size: 512}\n"), False),
    ("unknown-section", doc("optimizer: {lr: 0.1}\n"), False),
    ("lr-zero", doc("train: {lr: 0}\n"), False),
    ("lr-negative", doc("train: {lr: -0.001}\n"), False),
    ("num-gpus-zero", doc("resources: {num_gpus: 0}\n"), False),
    ("max-cost-negative", doc("limits: {max_cost_usd: -1}\n"), False),
    ("disk-too-small", doc("resources: {disk_gb: 4}\n"), False),
    ("warmup-zero", doc("train: {warmup_steps: 0}\n"), True),
    ("patience-zero", doc("train: {early_stopping: {patience: 0}}\n"), False),
    ("precision-unknown", doc("train: {precision: fp64}\n"), False),
    ("window-fraction", doc(data="  window: 1.5\n"), False),
    ("data-missing", "train: {lr: 0.001}\n", False),
    ("bucket-upper-case", doc("storage: {artifacts_bucket: My_Bucket}\n"), False),
    ("bucket-raw", doc("storage: {artifacts_bucket: quantlab-raw}\n"), False),
    ("min-ic-above-one", doc("promotion: {min_ic: 1.5}\n"), False),
    # rules between two keys that the schema says too
    ("start-without-end", doc(dates='{start: "20251201"}'), False),
    ("end-without-start", doc(dates='{end: "20251201"}'), False),
    ("start-with-null-end", doc(dates='{start: "20251201", end: null}'), False),
    ("no-day-at-all", doc(dates="{}"), False),
    ("no-day-empty-days", doc(dates="{days: []}"), False),
    ("days-and-range", doc(dates='{start: "20251201", end: "20251202", days: ["20251210"]}'), True),
    (
        "split-both-rules",
        doc(data="  split: {validation_days: 1, validation_fraction: 0.2}\n"),
        False,
    ),
    (
        "split-one-rule-other-null",
        doc(data="  split: {validation_days: 1, validation_fraction: null}\n"),
        True,
    ),
    ("no-epochs-no-steps", doc("train: {epochs: null}\n"), False),
    ("huber-delta-without-huber", doc("train: {huber_delta: 2.0}\n"), False),
    ("huber-delta-with-huber", doc("train: {loss: huber, huber_delta: 2.0}\n"), True),
    ("huber-delta-default-written", doc("train: {huber_delta: 1}\n"), True),
]

SWEEP = """
sweep: {{name: s}}
base:
  data:
    exchange: binance
    stream: bbo
    symbols: [btcusdt]
    dates: {{start: "20251201", end: "20251203"}}
space:
  train.lr: {{log_uniform: [1.0e-4, 1.0]}}
{extra}"""

SWEEP_NEAR_MISSES = [
    ("sweep-minimal", SWEEP.format(extra="trials: 4\n"), True),
    ("sweep-pruning-off", SWEEP.format(extra="trials: 4\npruning: {rule: off}\n"), True),
    ("sweep-trials-quoted", SWEEP.format(extra='trials: "4"\n'), False),
    ("sweep-trials-zero", SWEEP.format(extra="trials: 0\n"), False),
    ("sweep-unknown-sampler", SWEEP.format(extra="trials: 4\nsampler: annealing\n"), False),
    ("sweep-unknown-key", SWEEP.format(extra="trials: 4\ntrails: 4\n"), False),
    ("sweep-range-of-three", SWEEP.format(extra="trials: 4\n").replace("1.0]", "1.0, 2.0]"), False),
    ("sweep-range-text", SWEEP.format(extra="trials: 4\n").replace("1.0e-4", '"1e-4"'), False),
]


def _cli_accepts(text: str, sweep: bool = False) -> bool:
    try:
        parse_sweep(text) if sweep else parse_spec(text)
    except SpecError:
        return False
    return True


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_spec_passes_both(path: Path) -> None:
    text = path.read_text()
    assert _cli_accepts(text)
    assert JOB_SCHEMA.is_valid(_editor_reads(text)), list(
        JOB_SCHEMA.iter_errors(_editor_reads(text))
    )


@pytest.mark.parametrize("path", SHIPPED_SWEEPS, ids=[p.name for p in SHIPPED_SWEEPS])
def test_every_shipped_sweep_passes_both(path: Path) -> None:
    text = path.read_text()
    parse_sweep(text, here=path.parent)
    assert SWEEP_SCHEMA.is_valid(_editor_reads(text))


def test_the_shipped_specs_are_found() -> None:
    assert len(SHIPPED) >= 3 and len(SHIPPED_SWEEPS) >= 1
    assert len(NEAR_MISSES) + len(SWEEP_NEAR_MISSES) >= 25


@pytest.mark.parametrize(
    ("text", "valid"), [c[1:] for c in NEAR_MISSES], ids=[c[0] for c in NEAR_MISSES]
)
def test_the_cli_and_the_schema_agree_on_a_near_miss(text: str, valid: bool) -> None:
    assert _cli_accepts(text) is valid
    assert JOB_SCHEMA.is_valid(_editor_reads(text)) is valid


@pytest.mark.parametrize(
    ("text", "valid"), [c[1:] for c in SWEEP_NEAR_MISSES], ids=[c[0] for c in SWEEP_NEAR_MISSES]
)
def test_the_cli_and_the_schema_agree_on_a_sweep_near_miss(text: str, valid: bool) -> None:
    assert _cli_accepts(text, sweep=True) is valid
    assert SWEEP_SCHEMA.is_valid(_editor_reads(text)) is valid


@pytest.mark.parametrize(
    "text", [c[1] for c in NEAR_MISSES if not c[2]], ids=[c[0] for c in NEAR_MISSES if not c[2]]
)
def test_every_refusal_is_worded_for_a_person_under_its_yaml_path(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    for problem in info.value.problems:
        assert not any(word in problem for word in PYDANTIC_WORDS), problem
        path = problem.split(": ", 1)[0]
        known = {*JOB_SCHEMA.schema["properties"], *_editor_reads(text)}
        assert path.split(".")[0] in known, problem


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            doc("resources: {interruptible: yes}\n"),
            'resources.interruptible: must be true or false, not "yes"',
        ),
        (
            doc('train: {lr: "0.001"}\n'),
            'train.lr: must be a number, not the text "0.001": write it without quotes',
        ),
        (
            doc('train: {epochs: "3"}\n'),
            'train.epochs: must be a whole number, not the text "3": write it without quotes',
        ),
        (
            doc("train: {batch_size: 1024.5}\n"),
            "train.batch_size: must be a whole number, not 1024.5",
        ),
        (
            doc(dates="{start: 20251201, end: 20251203}"),
            'data.dates.start: write the day in quotes, "20251201": unquoted, YAML reads it '
            "as a number",
        ),
        (
            doc(dates="{start: 2025-12-01, end: 2025-12-03}"),
            'data.dates.start: must be a day written "YYYYMMDD", e.g. "20251201", not "2025-12-01"',
        ),
        (doc(symbols="[]"), "data.symbols: must have at least 1 item, not none"),
        (
            doc(symbols="btcusdt"),
            'data.symbols: must be a list, such as [a, b], not the text "btcusdt"',
        ),
        (
            doc(symbols="[BTCUSDT]"),
            'data.symbols.0: must be lower-case letters, digits, `_` or `-`, not "BTCUSDT"',
        ),
        (doc(data="  features: all\n"), 'data.features: must be a list or `auto`, not "all"'),
        (doc("job: {name: 5}\n"), "job.name: must be text, not the number 5: write it in quotes"),
        (
            doc("train: [lr, 0.001]\n"),
            'train: must be a section of `key: value` lines, not a list ["lr", 0.001]',
        ),
        (doc("model: {hidden: 64}\n"), "model.hidden: must be a list, such as [a, b], not 64"),
    ],
)
def test_messages_say_what_to_write(text: str, expected: str) -> None:
    assert expected in _problems(text)


def test_validate_refuses_a_yaml_boolean_word_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(doc("resources: {interruptible: yes}\n"))
    run = run_cli(["validate", str(path)])
    assert run.code == EXIT_SPEC
    assert 'resources.interruptible: must be true or false, not "yes"' in run.stderr


@pytest.mark.parametrize(
    ("symbols", "expected"),
    [
        (
            "[BTCUSDT]",
            'data.symbols.0: must be lower-case letters, digits, `_` or `-`, not "BTCUSDT"',
        ),
        ("[1]", "data.symbols.0: must be text, not the number 1: write it in quotes"),
    ],
)
def test_a_refused_item_is_one_problem_not_also_a_list_too_short(
    symbols: str, expected: str
) -> None:
    assert _problems(doc(symbols=symbols)) == [expected]


def test_set_values_are_read_as_the_spec_is(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(doc())
    spec = load_spec(path, ['data.dates.end="20251205"', "train.lr=1e-3", "promotion.auto=true"])
    assert (spec.data.dates.end, spec.train.lr, spec.promotion.auto) == ("20251205", 1e-3, True)
    for item, expected in [
        ("data.dates.end=20251205", 'data.dates.end: write the day in quotes, "20251205"'),
        (
            "resources.interruptible=yes",
            'resources.interruptible: must be true or false, not "yes"',
        ),
    ]:
        with pytest.raises(SpecError) as caught:
            load_spec(path, [item])
        assert caught.value.problems[0].startswith(expected)
