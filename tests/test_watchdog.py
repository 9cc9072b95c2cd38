"""The container's dead-man switch on a real local store: its runtime limit and the launcher's
heartbeat, with typed causes."""

from __future__ import annotations

from trainer.container.watchdog import StopReason, Watchdog
from trainer.spec.sections import LimitsSpec
from trainer.store import ObjectStore
from trainer.store.layout import Layout
from trainer.store.records import LauncherHeartbeat, write_record

START = 1_000_000.0
PATHS = Layout().job("j-dog")


def dog(store: ObjectStore, **limits: float) -> Watchdog:
    spec = LimitsSpec(**{"max_runtime_minutes": 60, "heartbeat_timeout_minutes": 10, **limits})
    return Watchdog(spec, store, PATHS, started=START)


def beat(store: ObjectStore, at: float, detached: bool = False) -> None:
    write_record(
        store, PATHS.launcher_heartbeat, LauncherHeartbeat(updated_at=at, detached=detached)
    )


def test_the_runtime_limit_stops_the_job(local_store: ObjectStore) -> None:
    assert dog(local_store).check(START + 3600) is None
    assert dog(local_store).check(START + 3601) == StopReason(
        "limit", "max_runtime exceeded (60 min)"
    )


def test_no_heartbeat_yet_is_no_reason_to_stop(local_store: ObjectStore) -> None:
    assert dog(local_store).check(START + 3000) is None


def test_a_stale_heartbeat_stops_the_job(local_store: ObjectStore) -> None:
    beat(local_store, START + 100)
    assert dog(local_store).check(START + 100 + 600) is None
    why = dog(local_store).check(START + 100 + 601)
    assert why is not None and why.cause == "heartbeat"
    assert why.reason == "launcher heartbeat stale for 10.0 min (limit 10 min)"


def test_a_beat_older_than_the_container_counts_from_its_start(local_store: ObjectStore) -> None:
    beat(local_store, START - 5000)  # left by an earlier launcher
    assert dog(local_store).check(START + 599) is None
    assert dog(local_store).check(START + 601) is not None


def test_detached_or_switched_off_leaves_only_the_runtime_limit(local_store: ObjectStore) -> None:
    beat(local_store, START, detached=True)
    assert dog(local_store).check(START + 3000) is None
    beat(local_store, START)
    assert dog(local_store, heartbeat_timeout_minutes=0).check(START + 3000) is None
    assert dog(local_store, heartbeat_timeout_minutes=0).check(START + 3601) is not None


def test_an_unreadable_heartbeat_is_no_evidence(local_store: ObjectStore) -> None:
    local_store.put(PATHS.launcher_heartbeat, b"not json")
    assert dog(local_store).check(START + 3000) is None
