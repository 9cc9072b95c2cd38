"""The sweep's search and leaderboard without training: trials handed out, a study rebuilt
from `sweep.json`, the board."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers import spec_dict
from trainer.spec.sweep import SweepSpec, sweep_from_dict
from trainer.store.records import SweepRecord, SweepTrial
from trainer.sweep.board import leaderboard, render
from trainer.sweep.search import Search


def _sweep(space: dict[str, Any], **fields: Any) -> SweepSpec:
    return sweep_from_dict({"base": spec_dict(), "space": space, **fields})


def _record(trials: list[SweepTrial], maximize: bool = True) -> SweepRecord:
    return SweepRecord(
        sweep_id="sweep-x",
        sampler="grid",
        metric="ic",
        maximize=maximize,
        space={"train.lr": {"choice": [0.1, 0.01, 0.001]}},
        trials_planned=3,
        trials=tuple(trials),
        best=0,
        started_at="2026-01-01T00:00:00Z",
    )


def _trial(n: int, lr: float, state: str, value: float | None = None) -> SweepTrial:
    return SweepTrial.model_validate(
        {
            "number": n,
            "job_id": f"job-{n}",
            "params": {"train.lr": lr},
            "state": state,
            "value": value,
        }
    )


def test_a_grid_is_walked_in_the_order_written() -> None:
    search = Search(
        _sweep(
            {"train.lr": {"choice": [0.1, 0.01]}, "train.seed": {"integer": [0, 1]}}, sampler="grid"
        )
    )
    asks = [search.ask() for _ in range(4)]
    assert [a.number for a in asks] == [0, 1, 2, 3]
    assert [tuple(a.params.values()) for a in asks] == [(0.1, 0), (0.1, 1), (0.01, 0), (0.01, 1)]


def test_choices_that_are_lists_come_back_as_the_values() -> None:
    search = Search(
        _sweep({"model.hidden": {"choice": [[8], [16, 8]]}}, sampler="random", trials=4)
    )
    assert all(search.ask().params["model.hidden"] in ([8], [16, 8]) for _ in range(4))


def test_a_continued_grid_reruns_the_interrupted_trial_and_then_what_is_left() -> None:
    sweep = _sweep({"train.lr": {"choice": [0.1, 0.01, 0.001]}}, sampler="grid")
    record = _record([_trial(0, 0.1, "complete", 0.2), _trial(1, 0.01, "running")])
    search = Search(sweep, record)
    first, second = search.ask(), search.ask()
    assert (first.number, first.params) == (1, {"train.lr": 0.01})  # same number: same job
    assert (second.number, second.params) == (2, {"train.lr": 0.001})
    assert len(search.study.trials) == 3  # the finished one was told to the study


def test_a_continued_tpe_study_knows_the_finished_trials() -> None:
    sweep = _sweep({"train.lr": {"log_uniform": [1e-4, 1.0]}}, trials=6)
    record = _record(
        [_trial(0, 0.01, "complete", 0.3), _trial(1, 0.5, "pruned"), _trial(3, 0.02, "failed")]
    )
    search = Search(sweep, record)
    numbers = [search.ask().number for _ in range(3)]
    assert numbers == [2, 4, 5]
    states = sorted(t.state.name for t in search.study.trials if t.state.is_finished())
    assert states == ["COMPLETE", "FAIL", "PRUNED"]


def test_the_leaderboard_shows_the_best_so_far_and_marks_the_best() -> None:
    record = _record(
        [
            _trial(0, 0.1, "complete", 0.2),
            _trial(1, 0.01, "complete", 0.35),
            _trial(2, 0.001, "pruned", 0.01),
        ]
    ).model_copy(update={"best": 1})
    rows = leaderboard(record)
    assert [r["best so far"] for r in rows] == ["0.2", "0.35", "0.35"]
    assert [r["state"] for r in rows] == ["complete", "complete *", "pruned"]
    assert rows[0]["train.lr"] == "0.1" and rows[2]["ic"] == "0.01"
    text = render(record)
    assert text.splitlines()[0] == (
        "sweep sweep-x (running): 2 complete, 1 pruned of 3; best trial 1 (job-1) ic 0.35"
    )


def test_the_steps_pruning_saved_are_in_sweep_json_and_on_the_board() -> None:
    steps = {"steps": 40, "planned_steps": 100}
    pruned = _trial(2, 0.001, "pruned", 0.01).model_copy(update=steps)
    complete = _trial(0, 0.1, "complete", 0.2).model_copy(update={**steps, "steps": 100})
    record = _record([complete, pruned])
    written = json.loads(record.to_json())
    assert [t["steps_saved"] for t in written["trials"]] == [0, 60]
    assert written["steps_saved"] == 60
    assert SweepRecord.model_validate(written) == record  # read back: derived, not stored
    rows = leaderboard(record)
    assert [r["steps"] for r in rows] == ["100/100", "40/100"]
    assert render(record).splitlines()[0].endswith("; pruning saved 60 of 200 planned steps")


def test_a_sweeps_instance_is_its_job_with_the_sweeps_limits_and_spec() -> None:
    from trainer.launcher.credentials import scope_policy
    from trainer.launcher.payload import container_env
    from trainer.spec.sweep import instance_spec

    sweep = _sweep(
        {"train.lr": {"choice": [0.1]}},
        sampler="grid",
        sweep={"id": "sw-1"},
        limits={"max_cost_usd": 3, "max_runtime_minutes": 90},
    )
    spec = instance_spec(sweep)
    assert spec.job_id == "sw-1"
    assert (spec.limits.max_cost_usd, spec.limits.max_runtime_minutes) == (3, 90)
    assert spec.limits.provision_timeout_minutes == sweep.base.limits.provision_timeout_minutes
    env = container_env(
        jobspec_uri="s3://a/ml-artifacts/sw-1/jobspec.yaml",
        num_gpus=1,
        aws={},
        launcher_env={},
        sweep_uri="s3://a/ml-artifacts/sw-1/sweep.yaml",
    )
    assert env["QUANTLAB_SWEEP"] == "s3://a/ml-artifacts/sw-1/sweep.yaml"
    writes = scope_policy(spec, "*")["Statement"][1]["Resource"]
    assert writes == "arn:aws:s3:::quantlab-artifacts/ml-artifacts/*/*"
