"""The job lease through conditional writes, on the local store and on loopback S3: one live
holder, taken over only once its record stops changing, never by comparing clocks."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from trainer.store import ObjectStore
from trainer.store.layout import Layout
from trainer.store.lease import STALE_GRACE_S, Lease, LeaseHeld, LeaseLost
from trainer.store.records import LeaseRecord, read_record

LOC = Layout().job("leased").lease


class Clock:
    """A monotonic clock that moves only when someone sleeps (and then runs `on_sleep`)."""

    def __init__(self, on_sleep: Callable[[], None] = lambda: None) -> None:
        self.now = 0.0
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.on_sleep()


def lease(store: ObjectStore, instance: str, clock: Clock | None = None) -> Lease:
    clock = clock or Clock()
    return Lease(store, LOC, instance=instance, renew_every_s=1.0, clock=clock, sleep=clock.sleep)


def holder(store: ObjectStore) -> LeaseRecord:
    found = read_record(store, LOC, LeaseRecord)
    assert found is not None
    return found


def test_a_free_lease_is_taken_and_renewed(store: ObjectStore) -> None:
    first = lease(store, "101")
    first.acquire()
    assert first.held and holder(store).instance == "101"
    first.renew()
    first.renew()
    assert holder(store).renewals == 2 and holder(store).holder == first.holder


def test_a_live_holder_keeps_the_lease(store: ObjectStore) -> None:
    first = lease(store, "101")
    first.acquire()
    clock = Clock(on_sleep=first.renew)  # the holder renews while the second one waits
    second = lease(store, "202", clock)
    with pytest.raises(LeaseHeld, match="held by instance 101") as caught:
        second.acquire()
    assert caught.value.holder.instance == "101"
    assert clock.now < 1.0  # one renewal seen is enough
    assert holder(store).holder == first.holder and not second.held


def test_a_quiet_holder_is_taken_over_after_its_renewals_stop(store: ObjectStore) -> None:
    first = lease(store, "101")
    first.acquire()
    clock = Clock()  # nobody renews: the first holder is gone
    second = lease(store, "202", clock)
    second.acquire()
    assert holder(store).instance == "202"
    assert 3 * 1.0 + STALE_GRACE_S <= clock.now < 3 * 1.0 + STALE_GRACE_S + 1
    with pytest.raises(LeaseLost, match="another holder took the lease over"):
        first.renew()  # the old holder learns it at its next renewal
    second.renew()


def test_a_released_lease_and_a_restart_on_the_same_instance_need_no_wait(
    store: ObjectStore,
) -> None:
    first = lease(store, "101")
    first.acquire()
    first.release()
    assert holder(store).released
    clock = Clock()
    second = lease(store, "202", clock)
    second.acquire()
    assert clock.now == 0 and holder(store).instance == "202"
    again = lease(store, "202", clock)  # the container restarted on its instance
    again.acquire()
    assert clock.now == 0 and holder(store).holder == again.holder


def test_racing_takers_have_one_winner(store: ObjectStore) -> None:
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def take(i: int) -> None:  # real clocks: the holder renews every 10 ms
        mine = Lease(store, LOC, instance=f"30{i}", renew_every_s=0.01)
        start.wait()
        try:
            mine.acquire()
        except LeaseHeld:
            outcomes.append("held")
            return
        outcomes.append("won")
        for _ in range(500):  # stay alive until the others have seen it renew
            if len(outcomes) == 4:
                return
            mine.renew()
            threading.Event().wait(0.01)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1 and outcomes.count("held") == 3
