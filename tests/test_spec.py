"""The JobSpec: shipped specs load, errors name their YAML path, ids are derived from the
content and the data's fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.launcher_env import run_cli
from trainer.errors import EXIT_SPEC, SpecError
from trainer.model.code import resolve_code
from trainer.spec import JobSpec, dump_spec, load_spec, parse_spec
from trainer.spec.docs import REFERENCE_BEGIN, REFERENCE_END, json_schema, markdown_reference
from trainer.spec.sections import UnresolvedSpec

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "jobspecs").glob("*.yaml"))

MINIMAL = """
data:
  exchange: binance
  stream: bbo
  symbols: [btcusdt]
  dates: {start: "20251201", end: "20251203"}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.problems


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_spec_is_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(path)
    assert spec.data.dates.resolve()
    if spec.code is not None:  # its code packs, from the repository root as documented
        monkeypatch.chdir(ROOT)
        assert (resolve_code(spec).code or spec.code).sha256 is not None
    if spec.job.id is None:  # derived: only from the spec resolved against its data
        with pytest.raises(UnresolvedSpec):
            _ = spec.job_id


def test_shipped_specs_exist() -> None:
    assert {p.name for p in SHIPPED} >= {
        "btcusdt-mlp.yaml",
        "tiny-cpu.yaml",
        "gated-residual-cpu.yaml",
    }


def test_three_problems_three_lines_each_with_its_yaml_path() -> None:
    problems = _problems(
        """
data:
  exchange: binance
  stream: bbo
  symbols: [btcusdt]
  dates: {start: "20251210", end: "20251201"}
train:
  lr: -0.001
  bacth_size: 512
"""
    )
    assert sorted(problems) == [
        "data.dates.end: 20251201 is before start 20251210",
        "train.bacth_size: unknown key (did you mean 'batch_size'?)",
        "train.lr: must be greater than 0",
    ]


def test_error_message_lists_every_problem() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(MINIMAL + "resources:\n  num_gpu: 2\n", source="x.yaml")
    text = str(info.value)
    assert text.startswith("x.yaml: 1 problem(s)")
    assert "resources.num_gpu: unknown key (did you mean 'num_gpus'?)" in text


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('dates: {start: "20250230", end: "20250301"}', "data.dates.start: 20250230 is not a real"),
        ('dates: {start: "20250101"}', "data.dates: give both `start` and `end`"),
        ('dates: {days: ["2025011"]}', 'data.dates.days.0: must be a day written "YYYYMMDD"'),
    ],
)
def test_dates_are_real_and_whole(snippet: str, expected: str) -> None:
    text = MINIMAL.replace('dates: {start: "20251201", end: "20251203"}', snippet)
    problems = _problems(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_missing_section_and_top_level_typo() -> None:
    problems = _problems("trian: {lr: 1}\n")
    assert "data: required" in problems
    assert "trian: unknown key (did you mean 'train'?)" in problems


def test_unknown_key_without_close_match_has_no_hint() -> None:
    assert _problems(MINIMAL + "limits:\n  zzz: 1\n") == ["limits.zzz: unknown key"]


def _fingerprinted(text: str, digest: str = "ab" * 32) -> JobSpec:
    spec = parse_spec(text)
    return spec.model_copy(update={"data": spec.data.model_copy(update={"fingerprint": digest})})


def test_job_id_is_derived_from_the_spec_and_its_data_and_stable() -> None:
    a, b = _fingerprinted(MINIMAL), _fingerprinted(MINIMAL)
    assert a.job_id == b.job_id and a.job_id.startswith("job-") and len(a.job_id) == 16
    assert _fingerprinted(MINIMAL + "train: {lr: 0.01}\n").job_id != a.job_id
    assert _fingerprinted(MINIMAL, "cd" * 32).job_id != a.job_id  # other data, other job
    assert parse_spec(MINIMAL + "job: {id: my-run-1}\n").job_id == "my-run-1"


def test_resolved_spec_roundtrips_with_defaults_and_id() -> None:
    spec = _fingerprinted(MINIMAL)
    again = parse_spec(dump_spec(spec))
    assert again.job.id == spec.job_id
    assert again.model_dump(exclude={"job"}) == spec.model_dump(exclude={"job"})
    assert again.train.lr == 1e-3


def test_overrides_go_through_validation(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(MINIMAL)
    assert load_spec(path, ["train.lr=3e-4"]).train.lr == 3e-4
    with pytest.raises(SpecError, match=r"train\.lr: must be greater than 0"):
        load_spec(path, ["train.lr=-1"])


def test_spec_is_frozen() -> None:
    spec = parse_spec(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        spec.train.lr = 5.0  # type: ignore[misc]


def test_json_schema_is_closed_and_documented() -> None:
    schema = json.loads(json_schema())
    train = schema["$defs"]["TrainSpec"]
    assert train["additionalProperties"] is False
    assert "Peak learning rate" in train["properties"]["lr"]["description"]


def test_readme_reference_matches_the_docstrings() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(REFERENCE_BEGIN), readme.index(REFERENCE_END) + len(REFERENCE_END)
    assert readme[start:end] == markdown_reference(), (
        "README's JobSpec reference is stale: regenerate it with `quantlab-train schema --markdown`"
    )


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("model: {type: linear, hidden: [8]}", "model: hidden only applies to `type: mlp`"),
        (
            "model: {type: linear, activation: relu}",
            "model: activation only applies to `type: mlp` and `type: tcn`",
        ),
        (
            "model: {type: tcn}",
            "model: `type: tcn` convolves over a window of rows: set data.window above 1 (e.g. 32)",
        ),
        ("train: {huber_delta: 0.5}", "train: `huber_delta` only applies to `loss: huber`"),
        (
            "train: {loss: mae}",
            "train.loss: must be `mse`, `huber`, `ic` or an entry point `package.module:function`",
        ),
        (
            "model: {type: gated-residual}",
            "model.type: must be `mlp`, `linear`, `tcn` or an entry point `package.module:factory`",
        ),
        (
            "model: {type: 'net:build'}",
            "model: `type: net:build` is an entry point; give `code.path`, its code",
        ),
        (
            "train: {loss: 'net:loss'}",
            "train: `loss: net:loss` is an entry point; give `code.path`, its code",
        ),
        ("model: {params: {width: 8}}", "model: `params` only apply to an entry point `type`"),
        (
            "code: {path: models}\nmodel: {type: 'net:build', params: {n_features: 8}}",
            "model: `params` may not set n_features: the runner passes them",
        ),
        (
            "code: {path: models, sha256: abc}",
            'code.sha256: must be 64 lower-case hex digits (a sha256), not "abc"',
        ),
        (
            "train: {early_stopping: {metric: sharpe}}",
            "train.early_stopping.metric: must be 'loss', 'val_loss', 'ic', 'rank_ic' or "
            "'hit_rate'",
        ),
    ],
)
def test_model_and_loss_options_that_do_not_fit_are_refused(snippet: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(MINIMAL + snippet)
    assert info.value.problems == [expected]


def test_a_linear_huber_spec_survives_its_own_dump() -> None:
    spec = parse_spec(
        MINIMAL
        + "job: {id: lin-huber}\nmodel: {type: linear}\ntrain: {loss: huber, huber_delta: 3}"
    )
    again = parse_spec(dump_spec(spec))
    assert again == spec.model_copy(update={"job": spec.job.model_copy(update={"id": spec.job_id})})


def test_validate_json_of_a_bad_spec_carries_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("job:\n  name: x\ntrain:\n  lrr: 1\n")
    ran = run_cli(["validate", str(bad), "--json"])
    assert ran.code == EXIT_SPEC
    verdict = json.loads(ran.stdout)
    assert verdict["outcome"] == "invalid_spec" and verdict["exit_code"] == EXIT_SPEC
    assert verdict["problems"] == ["data: required", "train.lrr: unknown key (did you mean 'lr'?)"]
    assert "2 problem(s) in the JobSpec" in verdict["error"]


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        (
            "{raw_bucket: other-raw, artifacts_bucket: quantlab-raw}",
            "storage.artifacts_bucket: 'quantlab-raw' is the storage layout's raw bucket",
        ),
        (
            "{raw_bucket: other-raw, compact_bucket: quantlab-raw}",
            "storage.compact_bucket: 'quantlab-raw' is the storage layout's raw bucket",
        ),
        (
            "{artifacts_bucket: quantlab-compact}",
            "storage.artifacts_bucket: 'quantlab-compact' is already storage.compact_bucket",
        ),
        (
            "{raw_bucket: team-data, compact_bucket: team-data}",
            "storage.compact_bucket: 'team-data' is already storage.raw_bucket",
        ),
    ],
)
def test_two_roles_never_share_a_bucket_and_the_raw_bucket_is_never_written(
    storage: str, expected: str
) -> None:
    problems = _problems(MINIMAL + f"storage: {storage}\n")
    assert any(p.startswith(expected) for p in problems), problems


FULL = MINIMAL + "train: {}\nlimits: {}\npromotion: {}\n"


def _with(section: str, body: str) -> str:
    return FULL.replace(f"{section}: {{}}", f"{section}: {{{body}}}")


@pytest.mark.parametrize(
    ("section", "body", "expected"),
    [
        ("promotion", "min_ic: .nan", "promotion.min_ic: must be a finite number"),
        ("promotion", "min_ic: 1.01", "promotion.min_ic: must be less than or equal to 1"),
        ("promotion", "max_ic_drop: .inf", "promotion.max_ic_drop: must be a finite number"),
        ("limits", "max_cost_usd: .inf", "limits.max_cost_usd: must be a finite number"),
        ("limits", "max_cost_usd: 100001", "limits.max_cost_usd: must be less than or equal"),
        ("limits", "max_runtime_minutes: .nan", "limits.max_runtime_minutes: must be a finite"),
        ("train", "weight_decay: .inf", "train.weight_decay: must be a finite number"),
        ("train", "weight_decay: 1.5", "train.weight_decay: must be less than or equal to 1"),
        ("train", "lr: .nan", "train.lr: must be a finite number"),
        ("train", "seed: 18446744073709551616", "train.seed: must be less than or equal to"),
        ("train", "seed: 9223372036854775808", "train.seed: must be less than or equal to"),
        (
            "train",
            "early_stopping: {min_delta: .inf}",
            "train.early_stopping.min_delta: must be a finite number",
        ),
    ],
)
def test_non_finite_and_absurd_numbers_are_refused_by_their_path(
    section: str, body: str, expected: str
) -> None:
    problems = _problems(_with(section, body))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("section", "body"),
    [
        ("promotion", "min_ic: -1"),
        ("promotion", "min_ic: 1"),
        ("promotion", "max_ic_drop: 2"),
        ("limits", "max_cost_usd: 100000"),
        ("limits", "max_runtime_minutes: 43200"),
        ("train", "weight_decay: 1"),
        ("train", "seed: 9223372036854775807"),
    ],
)
def test_the_boundaries_themselves_are_accepted(section: str, body: str) -> None:
    parse_spec(_with(section, body))


def test_a_symbol_twice_or_no_feature_is_refused() -> None:
    twice = MINIMAL.replace("symbols: [btcusdt]", "symbols: [btcusdt, ethusdt, btcusdt]")
    assert _problems(twice) == ["data.symbols: btcusdt listed more than once"]
    none = MINIMAL + "  features: []\n"
    assert _problems(none) == ["data.features: names no column: list at least one, or `auto`"]
