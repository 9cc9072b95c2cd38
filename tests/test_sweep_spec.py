"""The sweep spec: every problem under its YAML path, the space checked against the JobSpec,
trials derived from the base, ids from the content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.errors import SpecError
from trainer.spec.docs import (
    SWEEP_REFERENCE_BEGIN,
    SWEEP_REFERENCE_END,
    json_schema,
    sweep_reference,
)
from trainer.spec.sweep import SweepSpec, derived_sweep_id, load_sweep, parse_sweep

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "jobspecs" / "sweeps").glob("*.yaml"))

BASE = """
base:
  data:
    exchange: binance
    stream: bbo
    symbols: [btcusdt]
    dates: {start: "20251201", end: "20251203"}
  train: {epochs: 1, eval_every_steps: 10}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_sweep(text)
    return info.value.problems


def _resolved(sweep: SweepSpec) -> SweepSpec:
    data = sweep.base.data.model_copy(update={"fingerprint": "ab" * 32})
    return sweep.model_copy(update={"base": sweep.base.model_copy(update={"data": data})})


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_sweep_is_valid(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep.n_trials >= 1 and sweep.space


def test_each_problem_is_named_by_its_yaml_path() -> None:
    problems = _problems(
        BASE
        + """
space:
  train.lr: {log_uniform: [0, 1]}
  model.hidden: {choice: []}
  train.seed: {integer: [3, 1]}
  train.batch_size: {unifrom: [1, 2]}
sampler: annealing
pruning: {rule: median, startup_trails: 2}
"""
    )
    assert sorted(problems) == [
        "pruning.startup_trails: unknown key (did you mean 'startup_trials'?)",
        "sampler: must be 'grid', 'random' or 'tpe'",
        "space.model.hidden: `choice`: give at least one value",
        "space.train.batch_size.unifrom: unknown key (did you mean 'uniform'?)",
        "space.train.lr: `log_uniform`: low must be above 0",
        "space.train.seed: `integer`: low 3 must be below high 1",
    ]


def test_a_value_no_jobspec_accepts_is_refused_before_anything_runs() -> None:
    problems = _problems(
        BASE
        + """
space:
  train.lr: {log_uniform: [1.0e-4, 20]}
  train.lrr: {choice: [1, 2]}
  model.dropout: {choice: [0.1, 1.5]}
  resources.num_gpus: {choice: [1, 2]}
trials: 4
"""
    )
    assert problems == [
        "space.train.lr: 20.0 makes no valid trial: train.lr: must be less than or equal to 10",
        "space.train.lrr: 1 makes no valid trial: train.lrr: unknown key (did you mean 'lr'?)",
        "space.model.dropout: 1.5 makes no valid trial: model.dropout: must be less than 1",
        "space.resources.num_gpus: trials cannot vary `resources`: it is the sweep's identity, "
        "instance and budget (set it in the base or the sweep's `limits`)",
    ]


def test_grid_takes_choices_only_and_its_size_bounds_the_trials() -> None:
    assert _problems(BASE + "space:\n  train.lr: {uniform: [0.001, 0.01]}\nsampler: grid\n") == [
        "(top level): `sampler: grid` needs choices or integers; train.lr is a float range: "
        "use `random` or `tpe`"
    ]
    grid = (
        BASE
        + "space:\n  train.seed: {integer: [0, 4], step: 2}\n"
        + "  train.lr: {choice: [0.1, 0.01]}\nsampler: grid\n"
    )
    assert parse_sweep(grid).n_trials == 6
    assert _problems(grid + "trials: 7\n") == ["(top level): `trials`: 7 is more than the grid's 6"]
    assert _problems(BASE + "space:\n  train.lr: {uniform: [0.001, 0.01]}\n") == [
        "(top level): `trials`: required with `sampler: tpe`"
    ]


def test_a_bare_off_in_yaml_turns_pruning_off() -> None:
    sweep = parse_sweep(
        BASE + "space:\n  train.lr: {choice: [0.1]}\nsampler: grid\npruning: {rule: off}\n"
    )
    assert sweep.pruning.rule == "off"


def test_trials_are_the_base_with_their_values_each_its_own_job() -> None:
    sweep = _resolved(
        parse_sweep(
            BASE + "sweep: {name: lr}\nspace:\n  train.lr: {choice: [0.1, 0.01]}\nsampler: grid\n"
        )
    )
    one, two = sweep.trial_spec(0, {"train.lr": 0.1}), sweep.trial_spec(1, {"train.lr": 0.01})
    assert (one.train.lr, two.train.lr) == (0.1, 0.01)
    assert one.job.name == "lr #0" and one.job.tags == (f"sweep:{sweep.sweep_id}",)
    assert one.job_id != two.job_id and one.job_id.startswith("job-")
    assert one.data.fingerprint == sweep.base.data.fingerprint
    moved = sweep.trial_spec(2, {"data.split.validation_days": 2})
    assert moved.data.fingerprint is None  # its own pre-flight fixes its data


def test_the_points_proven_before_renting_cover_every_value_that_changes_the_model() -> None:
    sweep = parse_sweep(
        BASE
        + "space:\n"
        + "  model.hidden: {choice: [[16], [64, 32], [8]]}\n"
        + "  model.dropout: {uniform: [0.0, 0.5]}\n"
        + "  data.window: {integer: [1, 32], step: 10}\n"
        + "  train.lr: {log_uniform: [1.0e-4, 0.1]}\n"
        + "  train.seed: {integer: [0, 9]}\n"
        + "sampler: random\ntrials: 20\n"
    )
    assert sweep.proof_points() == [
        {"model.hidden": [16], "model.dropout": 0.0, "data.window": 1},
        {"model.hidden": [64, 32], "model.dropout": 0.5, "data.window": 31},
        {"model.hidden": [8], "model.dropout": 0.0, "data.window": 1},
    ]  # 31, not 32: the last window the step reaches; the learning rate and seed change no model
    lr_only = parse_sweep(BASE + "space:\n  train.lr: {choice: [0.1, 0.01]}\nsampler: grid\n")
    assert lr_only.proof_points() == []  # every trial trains the base's model


def test_the_sweep_id_changes_with_the_space_not_with_the_budget() -> None:
    text = BASE + "space:\n  train.lr: {choice: [0.1, 0.01]}\nsampler: grid\n"
    a = _resolved(parse_sweep(text))
    b = _resolved(parse_sweep(text + "limits: {max_cost_usd: 3}\ntrials_per_instance: 2\n"))
    c = _resolved(parse_sweep(text.replace("0.01", "0.02")))
    assert derived_sweep_id(a) == derived_sweep_id(b) != derived_sweep_id(c)
    assert a.sweep_id.startswith("sweep-")


def test_base_is_read_relative_to_the_sweep_file_and_set_overrides_it(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(BASE.replace("base:\n", "").replace("\n  ", "\n"))
    (tmp_path / "s.yaml").write_text(
        "base: base.yaml\nspace:\n  train.lr: {choice: [0.1]}\nsampler: grid\n"
    )
    sweep = load_sweep(tmp_path / "s.yaml", ["train.batch_size=256"])
    assert sweep.base.train.batch_size == 256 and sweep.base.train.epochs == 1


def test_schema_covers_the_sweep_and_the_readme_reference_is_current() -> None:
    schema = json.loads(json_schema(sweep=True))
    assert schema["title"] == "QuantLab sweep"
    assert schema["additionalProperties"] is False
    assert {"base", "space", "sampler", "trials", "objective", "pruning"} <= set(
        schema["properties"]
    )
    readme = (ROOT / "README.md").read_text()
    start = readme.index(SWEEP_REFERENCE_BEGIN)
    end = readme.index(SWEEP_REFERENCE_END) + len(SWEEP_REFERENCE_END)
    assert readme[start:end] == sweep_reference(), "run `quantlab-train schema --sweep --markdown`"
