"""What jobs produced, read from the store alone: `jobs`, `status` of a finished job without a
Vast.ai key, unknown ids, `compare` and the gate's preference, and the history entry itself."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.fakes.vast_server import running_fake_vast
from tests.helpers import commit_without_training, make_spec
from tests.launcher_env import env_var, run_cli
from trainer.errors import EXIT_SPEC, EXIT_UNKNOWN_JOB, UnknownJob
from trainer.job.state import JobFiles, state_of
from trainer.job.summary import record_commit, record_launch
from trainer.launcher.ops import job_status
from trainer.launcher.session import open_session
from trainer.report.compare import compare
from trainer.report.history import Filters, list_history, parse_since
from trainer.spec import dump_spec
from trainer.spec.sections import LimitsSpec
from trainer.store import ObjectStore
from trainer.store.layout import Layout
from trainer.store.records import (
    AttemptRecord,
    EvalMetrics,
    FailureRecord,
    JobSummary,
    LauncherHeartbeat,
    ProductionManifest,
    ProductionModel,
    StatusDoc,
    read_record,
    utc_now,
    write_record,
)

LAYOUT = Layout()


def _spec(job_id: str, symbol: str = "btcusdt", tags: tuple[str, ...] = (), **sections: Any):
    return make_spec(symbols=(symbol,), job={"id": job_id, "name": job_id.upper(),
                                             "tags": list(tags)}, **sections)  # fmt: skip


def _started(job_id: str, store: ObjectStore, **status: Any) -> None:
    """A job whose spec was uploaded and whose container reports `status`."""
    spec = _spec(job_id)
    paths = LAYOUT.job(job_id)
    store.put(paths.jobspec, dump_spec(spec).encode())
    doc = StatusDoc(job_id=job_id, container_id="7", started_at="2026-05-04T09:00:00Z",
                    updated_at_epoch=time.time(), **status)  # fmt: skip
    write_record(store, paths.status, doc)


def _failed(job_id: str, store: ObjectStore, cause: str) -> None:
    spec = _spec(job_id)
    paths = LAYOUT.job(job_id)
    store.put(paths.jobspec, dump_spec(spec).encode())
    record = FailureRecord.model_validate(
        {"job_id": job_id, "reason": f"it went {cause}", "cause": cause,
         "failed_at": "2026-05-02T12:00:00Z", "started_at": "2026-05-02T11:00:00Z"}
    )  # fmt: skip
    write_record(store, paths.failure, record)


@pytest.fixture
def history(store: ObjectStore) -> ObjectStore:
    commit_without_training(
        store,
        _spec("job-a", tags=("prod", "x")),
        ic=0.30,
        started_at="2026-05-01T10:00:00Z",
        ended_at="2026-05-01T10:20:00Z",
    )
    commit_without_training(
        store,
        _spec("job-b", symbol="ethusdt", tags=("x",)),
        ic=0.10,
        val_loss=0.5,
        started_at="2026-05-03T10:00:00Z",
        ended_at="2026-05-03T11:00:00Z",
    )
    _failed("job-c", store, "error")
    _failed("job-d", store, "user")
    _started("job-e", store, state="training", step=40, total_steps=100)
    store.put(LAYOUT.jobs_root.child("not a job/x"), b"")  # not a job id: not listed
    return store  # fmt: skip


def test_jobs_lists_every_job_with_its_state_and_metrics(history: ObjectStore) -> None:
    rows = list_history(history, LAYOUT)
    assert [(r.job_id, r.state) for r in rows] == [
        ("job-e", "running"),
        ("job-b", "committed"),
        ("job-c", "failed"),
        ("job-d", "interrupted"),
        ("job-a", "committed"),
    ]  # fmt: skip  (newest first)
    a = next(r for r in rows if r.job_id == "job-a").to_json()
    assert a["name"] == "JOB-A" and a["tags"] == ["prod", "x"] and a["symbols"] == ["btcusdt"]
    assert a["dates"] == "20251201..20251203 (3 days)" and a["model"] == "mlp"
    assert a["loss"] == "mse" and a["metrics"]["ic"] == 0.30 and a["duration_s"] == 1200
    assert a["cost_usd"] is None  # a local run: no launch recorded a cost
    c = next(r for r in rows if r.job_id == "job-c").to_json()
    assert c["reason"] == "it went error" and c["metrics"] is None and c["duration_s"] == 3600
    assert next(r for r in rows if r.job_id == "job-e").phase == "training"


def test_jobs_filters_and_sorts(history: ObjectStore) -> None:
    def ids(**f: Any) -> list[str]:
        return [r.job_id for r in list_history(history, LAYOUT, Filters(**f))]

    assert ids(symbols=["ethusdt"]) == ["job-b"]
    assert ids(tags=["x"]) == ["job-b", "job-a"] and ids(tags=["x", "prod"]) == ["job-a"]
    assert ids(states=["failed", "interrupted"]) == ["job-c", "job-d"]
    assert ids(since=parse_since("2026-05-02")) == ["job-e", "job-b", "job-c", "job-d"]
    assert ids(sort="ic")[:2] == ["job-a", "job-b"]  # best first, jobs without an IC last
    assert ids(sort="val_loss")[:2] == ["job-b", "job-a"]
    assert ids(sort="ic", reverse=True)[:2] == ["job-b", "job-a"]
    assert ids(sort="started", limit=2) == ["job-e", "job-b"]


def test_jobs_on_the_command_line(history: ObjectStore) -> None:
    root = history.root
    listed = run_cli(["jobs", "--store", root, "--json", "--state", "committed"])
    assert listed.code == 0 and [j["job_id"] for j in json.loads(listed.stdout)] == [
        "job-b", "job-a"]  # fmt: skip
    table = run_cli(["jobs", "--store", root, "--sort", "ic"])
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["JOB", "STATE", "STARTED"]
    assert lines[1].startswith("job-a  committed") and "+0.3000" in lines[1]
    assert "JOB-A #prod #x" in lines[1] and "local" in lines[1]
    assert run_cli(["jobs", "--store", root, "--since", "soon"]).code == EXIT_SPEC


def test_status_of_a_finished_job_needs_no_vast_key(history: ObjectStore) -> None:
    session = open_session(store=history)  # no VAST_API_KEY: asking Vast.ai would fail
    found = job_status(session, LAYOUT.artifacts_bucket, "job-a")
    assert found.state == "committed" and found.instances is None and found.note is None
    assert found.metrics is not None and found.metrics.ic == 0.30
    assert found.rows == {"train": 50_000, "validation": 1_000, "dropped_non_finite": 0}
    failed = job_status(session, LAYOUT.artifacts_bucket, "job-c")
    assert failed.state == "failed" and failed.failure is not None and failed.note is None
    running = job_status(session, LAYOUT.artifacts_bucket, "job-e")  # may be live: asks
    assert running.state == "running" and running.phase == "training"
    assert running.instances is None and "no Vast.ai API key" in (running.note or "")

    shown = run_cli(["status", "job-a", "--store", history.root])
    assert shown.code == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "job job-a (JOB-A): committed"
    assert "validation: ic 0.3000" in shown.stdout and "50,000 training rows" in shown.stdout
    as_json = json.loads(run_cli(["status", "job-a", "--store", history.root, "--json"]).stdout)
    assert as_json["state"] == "committed" and as_json["metrics"]["ic"] == 0.30


def test_an_unknown_job_id_is_exit_11_and_a_malformed_one_exit_2(store: ObjectStore) -> None:
    with pytest.raises(UnknownJob, match="no job job-nope: nothing under"):
        job_status(open_session(store=store), LAYOUT.artifacts_bucket, "job-nope")
    assert run_cli(["status", "job-nope", "--store", store.root]).code == EXIT_UNKNOWN_JOB
    bad = run_cli(["status", "../etc", "--store", store.root])
    assert bad.code == EXIT_SPEC and "cannot name a job folder" in bad.stderr
    assert run_cli(["report", "job-nope", "--store", store.root]).code == EXIT_UNKNOWN_JOB


def test_logs_and_stop_of_an_unknown_job_are_exit_11_and_write_nothing(
    store: ObjectStore,
) -> None:
    with running_fake_vast() as fake, env_var("VAST_API_KEY", fake.api_key):
        with env_var("VAST_URL", fake.url):
            logs = run_cli(["logs", "job-nope", "--store", store.root])
            stop = run_cli(["stop", "job-nope", "--store", store.root])
        assert fake.calls("destroy") == 0
    for ran in (logs, stop):
        assert ran.code == EXIT_UNKNOWN_JOB, ran.stderr
        assert ran.stdout == ""
        assert ran.stderr.count("no job job-nope: nothing under") == 1
    assert store.list(LAYOUT.job("job-nope").dir) == []


def test_a_launch_adds_its_cost_to_the_history_once_per_instance(store: ObjectStore) -> None:
    spec = _spec("job-l")
    paths = LAYOUT.job("job-l")

    def attempt(instance: int, cost: float) -> AttemptRecord:
        return AttemptRecord(number=1, instance_id=instance, outcome="retry", cost_usd=cost)

    record_launch(store, paths, spec, None, outcome="infra_error", reason="lost",
                  attempts=[attempt(1, 0.25)])  # fmt: skip
    # a second launcher that attached to instance 1, then rented instance 2
    record_launch(store, paths, spec, None, outcome="succeeded", reason="ok",
                  attempts=[attempt(1, 0.25), attempt(2, 0.5)])  # fmt: skip
    manifest = commit_without_training(store, spec, ic=0.2)  # the job commits last
    summary = read_record(store, paths.summary, JobSummary)
    assert summary is not None and summary.committed and summary.launches == 2
    assert summary.cost_usd == pytest.approx(0.75) and summary.outcome == "succeeded"
    assert [(a.launch, a.instance_id) for a in summary.attempts] == [(1, 1), (2, 2)]
    record_commit(store, paths, spec, manifest)  # written again: launches kept
    again = read_record(store, paths.summary, JobSummary)
    assert again is not None and again.cost_usd == pytest.approx(0.75)


def _files(**fields: Any) -> JobFiles:
    base: dict[str, Any] = {"committed": False, "failure": None, "status": None,
                            "heartbeat": None, "limits": LimitsSpec()}  # fmt: skip
    base.update(fields)
    return JobFiles(**base)


NOW = 1_800_000_000.0
ISO_BEFORE = "2027-01-15T07:00:00Z"  # before NOW
FRESH = StatusDoc(job_id="j", container_id="1", state="training", started_at=ISO_BEFORE,
                  updated_at_epoch=NOW - 10)  # fmt: skip
FAILED = FailureRecord(job_id="j", reason="x", cause="error", failed_at="2027-01-15T07:30:00Z")


@pytest.mark.parametrize(("files", "live", "state"), [
    (_files(committed=True), None, "committed"),
    (_files(status=FRESH), None, "running"),
    (_files(status=FRESH.model_copy(update={"updated_at_epoch": NOW - 3600})), None, "interrupted"),
    (_files(status=FRESH.model_copy(update={"updated_at_epoch": NOW - 3600})), True, "running"),
    (_files(failure=FAILED), None, "failed"),
    (_files(failure=FAILED.model_copy(update={"cause": "limit"})), None, "failed"),
    (_files(failure=FAILED.model_copy(update={"cause": "outbid"})), None, "interrupted"),
    (_files(failure=FAILED, status=FRESH), None, "failed"),  # the failure came after it started
    (_files(status=FRESH.model_copy(update={"state": "failed", "cause": "error"})), None, "failed"),
    (_files(summary=JobSummary(job_id="j", outcome="no_offer")), None, "interrupted"),
    (_files(heartbeat=LauncherHeartbeat(updated_at=NOW - 5)), None, "running"),
    (_files(heartbeat=LauncherHeartbeat(updated_at=NOW - 5, detached=True)), None, "interrupted"),
])  # fmt: skip
def test_one_state_for_every_command(files: JobFiles, live: bool | None, state: str) -> None:
    assert state_of(files, NOW, live) == state


def _production(store: ObjectStore, symbol: str, ic: float) -> None:
    manifest = ProductionManifest(
        symbol=symbol, version=3, action="promote", source_job="job-old", promoted_at=utc_now(),
        metrics=EvalMetrics(val_loss=1, ic=ic, rank_ic=ic, hit_rate=0.5, rows=10),
        model=ProductionModel(sha256="0" * 64, size=1),
    )  # fmt: skip
    write_record(store, LAYOUT.production(symbol).manifest, manifest)


def test_compare_prefers_the_best_job_the_gate_lets_through(store: ObjectStore) -> None:
    commit_without_training(store, _spec("job-hi", promotion={"min_ic": 0.4}), ic=0.35)
    commit_without_training(store, _spec("job-mid"), ic=0.25)
    commit_without_training(store, _spec("job-lo"), ic=0.05)
    found = compare(store, LAYOUT.artifacts_bucket, ["job-hi", "job-mid", "job-lo"])
    assert [e.passed for e in found.entries] == [False, True, True]
    assert "below min_ic 0.4000" in found.entries[0].gate
    assert found.preferred == "job-mid" and "highest validation IC (0.2500)" in found.why

    _production(store, "btcusdt", ic=0.30)
    against = compare(store, LAYOUT.artifacts_bucket, ["job-mid", "job-lo"], vs_production=True)
    assert against.preferred is None and against.why == "the gate refuses every job"
    assert "more than max_ic_drop" in against.entries[0].gate

    shown = run_cli(["compare", "job-hi", "job-mid", "--vs", "production", "--store", store.root])
    assert shown.code == 0, shown.stderr
    assert "production btcusdt: v3 from job-old" in shown.stdout
    assert shown.stdout.rstrip().endswith("preferred: none: the gate refuses every job")
    pending = run_cli(["compare", "job-mid", "job-nope", "--store", store.root])
    assert pending.code == EXIT_UNKNOWN_JOB


def test_parse_since() -> None:
    assert parse_since("2026-05-01") == parse_since("20260501") == 1777593600.0
    assert parse_since("2026-05-01T12:00:00Z") == 1777593600.0 + 43200
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("90m", now=10_000.0) == 10_000.0 - 5400
