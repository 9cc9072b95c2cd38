"""Sweeps on this CPU: every trial an ordinary job, the data read once, losers pruned, a
failed trial recorded and the sweep going on, an interrupted sweep continued."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.s3_counter import CountingS3
from tests.helpers import make_dataset, make_spec, spec_dict
from trainer.cli import main
from trainer.data.footers import FOOTER_READ
from trainer.job.artifacts import read_manifest
from trainer.spec.sweep import SweepSpec, sweep_from_dict
from trainer.store import ObjectStore, open_store
from trainer.store.layout import Layout
from trainer.store.records import SweepRecord
from trainer.sweep.book import read_sweep, sweep_paths
from trainer.sweep.run import run_sweep

pytestmark = pytest.mark.slow  # each trial trains, exports and commits a model


def _sweep(space: dict[str, Any], **fields: Any) -> SweepSpec:
    base = spec_dict(train={"epochs": 2, "eval_every_steps": 8, "log_every_steps": 8})
    return sweep_from_dict({"base": base, "space": space, "sampler": "grid", **fields})


@pytest.fixture
def data_store(local_store: ObjectStore) -> ObjectStore:
    make_dataset(local_store, make_spec())
    return local_store


def test_pruning_stops_the_bad_learning_rates_early_and_every_trial_is_a_job(
    data_store: ObjectStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sweep = _sweep(
        {"train.lr": {"choice": [0.003, 1.0e-7]}, "train.seed": {"integer": [0, 1]}},
        pruning={"rule": "median", "startup_trials": 2},
    )
    result = run_sweep(sweep, data_store, device="cpu")
    record = result.record
    assert record.state == "committed" and result.outcome == "succeeded"
    states = {t.params["train.lr"]: set() for t in record.trials}
    for t in record.trials:
        states[t.params["train.lr"]].add(t.state)
    assert states == {0.003: {"complete"}, 1.0e-7: {"pruned"}}
    pruned = [t for t in record.trials if t.state == "pruned"]
    assert all(t.pruned_at_step and t.pruned_at_step < (t.planned_steps or 0) for t in pruned)
    assert record.steps_saved == sum((t.planned_steps or 0) - (t.steps or 0) for t in pruned) > 0
    written = json.loads(data_store.get(sweep_paths(_resolved_like(sweep, data_store)).sweep))
    assert written["steps_saved"] == record.steps_saved  # in sweep.json, for any reader
    assert record.best_trial is not None and record.best_trial.params["train.lr"] == 0.003
    assert record.data_reads == 1
    # every trial is an ordinary committed job: status, report and compare read it
    layout = Layout()
    for t in record.trials:
        manifest = read_manifest(data_store, layout.job(t.job_id))
        assert manifest is not None and manifest.metrics.pruned_at_step == t.pruned_at_step
    assert len({t.job_id for t in record.trials}) == 4
    root = data_store.root
    capsys.readouterr()
    assert main(["status", pruned[0].job_id, "--store", root]) == 0
    ids = [t.job_id for t in record.trials]
    assert main(["compare", *ids, "--store", root]) == 0
    out = capsys.readouterr().out
    assert record.best_trial.job_id in out
    # the history lists the trials as jobs and the sweep as a sweep
    assert main(["jobs", "--store", root, "--tag", f"sweep:{record.sweep_id}", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(j["job_id"] for j in listed) == sorted(ids)
    assert main(["jobs", "--store", root, "--sweeps"]) == 0
    table = capsys.readouterr().out
    assert record.sweep_id in table and "2 complete 2 pruned of 4" in table
    page = tmp_path / "sweep.html"
    assert main(["report", record.sweep_id, "--store", root, "--out", str(page)]) == 0
    text = page.read_text()
    assert "<svg" in text and record.best_trial.job_id in text and "pruned@" in text
    # a sweep committed is done: nothing runs again
    again = run_sweep(sweep, data_store, device="cpu")
    assert again.outcome == "already_done" and again.record == record


def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(data_store: ObjectStore) -> None:
    # 20251209 has no partition: that trial's pre-flight fails, the others train
    sweep = _sweep({"data.dates.end": {"choice": ["20251203", "20251209"]}}, trials=2)
    record = run_sweep(sweep, data_store, device="cpu").record
    by_end = {t.params["data.dates.end"]: t for t in record.trials}
    assert by_end["20251203"].state == "complete"
    failed = by_end["20251209"]
    assert failed.state == "failed" and "20251204" in (failed.reason or "")
    assert record.state == "committed" and record.best == by_end["20251203"].number


def test_an_interrupted_sweep_continues_without_running_a_trial_twice(
    data_store: ObjectStore,
) -> None:
    sweep = _sweep({"train.lr": {"choice": [0.003, 0.01, 0.03]}})

    def stop_at_the_second(record: SweepRecord) -> None:
        if len(record.trials) == 2 and record.trials[1].state == "running":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, data_store, device="cpu", on_change=stop_at_the_second)
    paths = sweep_paths(_resolved_like(sweep, data_store))
    halfway = read_sweep(data_store, paths)
    assert halfway is not None and halfway.state == "running"
    assert [t.state for t in halfway.trials] == ["complete", "running"]
    first = read_manifest(data_store, Layout().job(halfway.trials[0].job_id))
    record = run_sweep(sweep, data_store, device="cpu").record
    assert [t.state for t in record.trials] == ["complete"] * 3
    assert record.trials[1].job_id == halfway.trials[1].job_id  # the same job, run again
    again = read_manifest(data_store, Layout().job(record.trials[0].job_id))
    assert first is not None and again == first  # committed once, never trained again


def test_sweep_local_prints_each_trial_and_promotes_the_best(
    data_store: ObjectStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sweep.yaml"
    raw = {
        "sweep": {"name": "cli"},
        "base": spec_dict(train={"epochs": 1}),
        "space": {"train.lr": {"choice": [0.003, 0.01]}},
        "sampler": "grid",
    }
    path.write_text(yaml.safe_dump(raw))
    code = main(
        ["sweep", str(path), "--local", "--store", data_store.root, "--json", "--promote-best"]
    )
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    last = next(i for i, line in enumerate(out) if '"event": "result"' in line)
    lines = [json.loads(line) for line in out[: last + 1]]
    assert [e["event"] for e in lines] == [
        "trial_started",
        "trial_ended",
        "trial_started",
        "trial_ended",
        "result",
    ]
    result = lines[-1]
    assert result["state"] == "committed" and result["trials"] == {"complete": 2}
    promoted = json.loads("\n".join(out[last + 1 :]))  # the promotion's own JSON
    assert promoted["source_job"] == result["best"]["job_id"]


def _resolved_like(sweep: SweepSpec, store: ObjectStore) -> SweepSpec:
    from trainer.sweep.run import resolve_sweep
    from trainer.sweep.shared import SharedSections

    return resolve_sweep(sweep, SharedSections(store))


@pytest.fixture
def counting(
    s3_endpoint: str, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[CountingS3]:
    proxy = CountingS3(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        yield proxy
    finally:
        proxy.close()


def test_each_parquet_byte_is_read_once_for_trials_sharing_a_data_section(
    counting: CountingS3, tmp_path: Path
) -> None:
    store = open_store("s3://", read_only_buckets=["quantlab-raw"])
    make_dataset(store, make_spec())
    sweep = _sweep({"train.lr": {"choice": [0.003, 0.01, 0.03]}})
    features = "quantlab-compact/features/"
    counting.reset()
    run_sweep(sweep, store, device="cpu")
    three = dict(counting.get_bytes)
    data = {k: n for k, n in three.items() if k.startswith(features) and k.endswith(".parquet")}
    sizes = {k: len(store.get(_loc(k))) for k in data}
    # each file once, plus the pre-flight's footer read, which asks for the last 64 KiB
    assert len(data) == 3 and all(data[k] <= sizes[k] + FOOTER_READ for k in data), (data, sizes)
    # one trial alone reads exactly what the three together read
    counting.reset()
    one = _sweep({"train.lr": {"choice": [0.02]}})
    run_sweep(one, store, device="cpu")
    assert counting.bytes_under(features) == sum(
        n for k, n in three.items() if k.startswith(features)
    )


def _loc(key: str) -> Any:
    from trainer.store.base import Loc

    bucket, _, rest = key.partition("/")
    return Loc(bucket, rest)
