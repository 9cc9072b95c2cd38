"""The watch's rules as a table: one observation and attempt in, the verdict out, no server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.fakes.vast_offers import make_offer
from trainer.launcher.attempt import Attempt, Ending
from trainer.launcher.offers import Candidate
from trainer.launcher.vast import Instance, Offer
from trainer.launcher.verdict import Observation, Rules, decide, stopped_from_outside
from trainer.spec.sections import LimitsSpec
from trainer.store.records import (
    DatasetRef,
    EvalMetrics,
    FailureRecord,
    JobManifest,
    JobMetrics,
    ModelRef,
    ResultSentinel,
    StatusDoc,
)

NOW = 10_000.0
RULES = Rules(job_id="j-1", limits=LimitsSpec(provision_timeout_minutes=10, max_runtime_minutes=60))
OFFER = Offer.from_row(make_offer(7, "RTX 4090", dph_base=0.40))
CANDIDATE = Candidate(OFFER, None, 0.01)


def row(**fields: Any) -> Instance:
    base: dict[str, Any] = {
        "id": 70,
        "actual_status": "running",
        "intended_status": "running",
        "cur_state": "running",
        "next_state": "running",
        "machine_id": OFFER.machine_id,
        "gpu_name": "RTX 4090",
        "dph_total": CANDIDATE.dph,
        "is_bid": False,
    }
    return Instance.from_row(base | fields)


def attempt(**fields: Any) -> Attempt:
    a = Attempt(
        number=1,
        instance_id=70,
        candidate=CANDIDATE,
        attached=False,
        created_at=NOW - 120,
        created_wall=1_000_000.0,
        dph=CANDIDATE.dph,
        storage_per_hour=0.01,
        machine_id=OFFER.machine_id,
        job_started=NOW - 60,
    )
    for name, value in fields.items():
        setattr(a, name, value)
    return a


def status(state: str, **fields: Any) -> StatusDoc:
    return StatusDoc(
        job_id="j-1", container_id="70", state=state, started_at="2026-12-01T00:00:00Z", **fields
    )


def manifest() -> JobManifest:
    final = EvalMetrics(val_loss=1.0, ic=0.3, rank_ic=0.3, hit_rate=0.6, rows=10)
    metrics = JobMetrics(
        final=final,
        best=None,
        best_step=0,
        steps=1,
        rows_seen=10,
        stopped_early=False,
        train_seconds=1.0,
        rows_dropped_non_finite=0,
        history=(),
        rows_seen_all_ranks=10,
        world_size=1,
        resumed_from_step=None,
        checkpoints=(),
    )
    return JobManifest(
        job_id="j-1",
        started_at="a",
        ended_at="b",
        committed_at="c",
        code_version="0",
        device="cpu",
        dataset=DatasetRef(config_hash="h", featureset="v1"),
        model=ModelRef(format="f", features=("x",), label="y"),
        metrics=metrics,
        files=(),
    )


def sentinel(code: int, **fields: Any) -> ResultSentinel:
    outcome = "failed" if code not in (7, 130) else "stopped"
    return ResultSentinel(job_id="j-1", outcome=outcome, exit_code=code, **fields)


def failure(cause: str) -> FailureRecord:
    return FailureRecord(job_id="j-1", reason=f"the {cause}", cause=cause, failed_at="x")  # type: ignore[arg-type]


def obs(**fields: Any) -> Observation:
    return Observation(now=NOW, row=fields.pop("row", row()), **fields)


CASES: list[tuple[str, Observation, Attempt, Ending | None, bool]] = [
    # (name, observation, attempt, ending, bad host)
    ("training, nothing to say", obs(status=status("training")), attempt(), None, False),
    ("committed and verified", obs(manifest=manifest()), attempt(), Ending.SUCCEEDED, False),
    (
        "committed but damaged",
        obs(manifest=manifest(), manifest_problem="model.bin does not match"),
        attempt(),
        Ending.JOB_FAILED,
        False,
    ),
    (
        "the manifest wins over a lost host",
        obs(manifest=manifest(), row=row(actual_status="offline")),
        attempt(),
        Ending.SUCCEEDED,
        False,
    ),
    (
        "price read back above the offer",
        obs(row=row(dph_total=0.9), check_price=True),
        attempt(),
        Ending.RETRY,
        False,
    ),
    (
        "price checked only on the first row",
        obs(row=row(dph_total=0.9), check_price=False),
        attempt(),
        None,
        False,
    ),
    (
        "rented on-demand instead of a bid",
        obs(row=row(is_bid=False), check_price=True),
        attempt(candidate=Candidate(OFFER, 0.2, 0.01)),
        Ending.RETRY,
        False,
    ),
    (
        "pull failure",
        obs(row=row(actual_status="loading", status_msg="pull access denied for x")),
        attempt(),
        Ending.RETRY,
        True,
    ),
    ("host offline", obs(row=row(actual_status="offline")), attempt(), Ending.RETRY, True),
    (
        "outbid",
        obs(
            row=row(
                actual_status="stopped",
                cur_state="stopped",
                intended_status="stopped",
                next_state="stopped",
            )
        ),
        attempt(),
        Ending.RETRY,
        False,
    ),
    (
        "a stop request beats a failure report",
        obs(stop_requested=True, sentinel=sentinel(6, reason="boom", cause="error")),
        attempt(),
        Ending.CANCELLED,
        False,
    ),
    (
        "the job failed",
        obs(sentinel=sentinel(6, reason="boom", cause="error")),
        attempt(),
        Ending.JOB_FAILED,
        False,
    ),
    (
        "another container holds the lease",
        obs(sentinel=sentinel(9, reason="held by instance 31000007", cause="lease", holder="7")),
        attempt(),
        Ending.ELSEWHERE,
        False,
    ),
    (
        "its own runtime limit",
        obs(sentinel=sentinel(7, reason="ran out of time", cause="limit")),
        attempt(),
        Ending.LIMIT,
        False,
    ),
    (
        "the launcher heartbeat went stale",
        obs(sentinel=sentinel(7, reason="stale", cause="heartbeat")),
        attempt(),
        Ending.LIMIT,
        False,
    ),
    (
        "stopped from outside: the provider may yet say why",
        obs(sentinel=sentinel(130, reason="signal SIGTERM", cause="signal")),
        attempt(),
        None,
        False,
    ),
    (
        "stopped from outside, the provider never says why: another host may finish it",
        obs(sentinel=sentinel(130, reason="signal SIGTERM", cause="signal")),
        attempt(polls_stopped=2),
        Ending.RETRY,
        False,
    ),
    (
        "an old sentinel without a cause: the exit code decides",
        obs(sentinel=sentinel(130, reason="anything at all")),
        attempt(polls_stopped=2),
        Ending.RETRY,
        False,
    ),
    (
        "the wording of a reason decides nothing",
        obs(sentinel=sentinel(6, reason="max_runtime exceeded", cause="error")),
        attempt(),
        Ending.JOB_FAILED,
        False,
    ),
    (
        "a zero exit code is not a failure",
        obs(sentinel=ResultSentinel(outcome="succeeded", exit_code=0)),
        attempt(),
        None,
        False,
    ),
    (
        "status says stopped by its limit",
        obs(status=status("stopped", reason="limit hit", cause="limit")),
        attempt(),
        Ending.LIMIT,
        False,
    ),
    (
        "status says failed",
        obs(status=status("failed", reason="x", cause="error")),
        attempt(),
        Ending.JOB_FAILED,
        False,
    ),
    (
        "its own failure record, outbid",
        obs(failure=failure("outbid")),
        attempt(),
        Ending.RETRY,
        False,
    ),
    (
        "its own failure record, error",
        obs(failure=failure("error")),
        attempt(),
        Ending.JOB_FAILED,
        False,
    ),
    (
        "exited: first look, no verdict yet",
        obs(row=row(actual_status="exited")),
        attempt(polls_gone=1),
        None,
        False,
    ),
    (
        "exited without a record",
        obs(row=row(actual_status="exited")),
        attempt(polls_gone=2),
        Ending.JOB_FAILED,
        False,
    ),
    (
        "exited before the job started",
        obs(row=row(actual_status="exited")),
        attempt(polls_gone=2, job_started=None),
        Ending.RETRY,
        True,
    ),
    ("vanished while running", obs(row=None), attempt(polls_gone=2), Ending.RETRY, True),
    (
        "no status within the provisioning timeout",
        obs(row=row(actual_status="loading")),
        attempt(job_started=None, created_at=NOW - 601),
        Ending.RETRY,
        True,
    ),
    (
        "within the provisioning timeout",
        obs(row=row(actual_status="loading")),
        attempt(job_started=None, created_at=NOW - 599),
        None,
        False,
    ),
    (
        "the runtime limit since the job started",
        obs(status=status("training")),
        attempt(job_started=NOW - 3601),
        Ending.LIMIT,
        False,
    ),
    (
        "the money limit",
        obs(status=status("training"), over_budget="max_cost_usd reached"),
        attempt(),
        Ending.LIMIT,
        False,
    ),
]


@pytest.mark.parametrize(
    ("observation", "a", "ending", "bad_host"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_watch_rules(
    observation: Observation, a: Attempt, ending: Ending | None, bad_host: bool
) -> None:
    verdict = decide(observation, a, RULES)
    if ending is None:
        assert verdict is None
        return
    assert verdict is not None and verdict.ending is ending, verdict
    assert verdict.bad_host is bad_host
    assert verdict.reason


def test_detach_ends_the_watch_once_the_job_started() -> None:
    detached = replace(RULES, detach=True)
    started = decide(obs(status=status("training")), attempt(), detached)
    assert started is not None and started.ending is Ending.DETACHED
    assert (
        decide(obs(row=row(actual_status="loading")), attempt(job_started=None), detached) is None
    )
    failed = decide(obs(sentinel=sentinel(6, cause="error")), attempt(), detached)
    assert failed is not None and failed.ending is Ending.JOB_FAILED  # a verdict beats detaching


def test_success_carries_the_manifest_and_deciding_changes_nothing() -> None:
    a = attempt()
    before = dict(a.__dict__)
    verdict = decide(obs(manifest=manifest()), a, RULES)
    assert verdict is not None and verdict.manifest == manifest()
    assert a.__dict__ == before


def test_a_container_that_found_the_job_taken_names_the_instance_to_watch() -> None:
    seen = obs(sentinel=sentinel(9, reason="held by instance 31000007", cause="lease", holder="7"))
    verdict = decide(seen, attempt(), RULES)
    assert verdict is not None and verdict.holder == 7
    assert "another instance runs the job" in verdict.reason


OUTBID_ROW = row(
    actual_status="stopped", cur_state="stopped", intended_status="stopped", next_state="stopped"
)
SIGTERM = sentinel(130, reason="signal SIGTERM", cause="signal")


@pytest.mark.parametrize(
    ("seen", "cause", "words"),
    [
        (obs(sentinel=SIGTERM, row=OUTBID_ROW), "outbid", "was outbid: a higher bid took"),
        (obs(sentinel=SIGTERM, row=row(actual_status="offline")), "host_offline", "host offline"),
        (obs(row=OUTBID_ROW), "outbid", "was outbid"),
    ],
    ids=["signal-then-outbid", "signal-then-offline", "outbid"],
)
def test_an_interrupted_attempt_records_what_happened_not_the_signal(
    seen: Observation, cause: str, words: str
) -> None:
    verdict = decide(seen, attempt(), RULES)
    assert verdict is not None and verdict.ending is Ending.RETRY
    assert verdict.cause == cause and words in verdict.reason
    assert "SIGTERM" not in verdict.reason


def test_a_signal_waits_for_the_provider_then_says_it_was_stopped_from_outside() -> None:
    seen = obs(sentinel=SIGTERM)
    assert stopped_from_outside(seen) and not stopped_from_outside(obs(status=status("training")))
    a = attempt()
    for _ in range(2):  # as the watch counts: the provider has not said why yet
        assert decide(seen, a, RULES) is None
        a.polls_stopped += 1
    verdict = decide(seen, a, RULES)
    assert verdict is not None and verdict.cause == "signal"
    assert verdict.reason.endswith("the container was stopped from outside (signal SIGTERM)")
