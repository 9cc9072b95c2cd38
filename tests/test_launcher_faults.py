"""Every way a launch can go wrong ends with nothing live, nothing billing, the documented exit
code and a message saying what happened (fake Vast.ai, loopback S3, the real container)."""

from __future__ import annotations

import _thread
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakes.vast_faults import Fault, late
from tests.fakes.vast_offers import make_offer
from tests.fakes.vast_server import running_fake_vast
from tests.helpers import make_dataset
from tests.launcher_env import (
    FAST,
    TINY_DATA,
    Containers,
    Lab,
    env_var,
    lab,
    tiny_spec,
    wait_for,
    with_data,
)
from trainer.errors import (
    EXIT_INFRA,
    EXIT_JOB_FAILED,
    EXIT_LIMIT,
    EXIT_PROVISIONING,
    Cancelled,
    InfraError,
    JobFailed,
    LimitExceeded,
    ObjectNotFound,
    ProvisioningError,
    exit_code_of,
)
from trainer.launcher.hosts import BadHosts
from trainer.launcher.reach import ALLOW_LOCAL_STORE
from trainer.store import ObjectStore
from trainer.store.base import Loc
from trainer.store.layout import Layout

pytestmark = pytest.mark.slow  # subprocesses and end-to-end launches: the slow tier

MARKET = [make_offer(8_000_001 + i, "RTX 4090", dph_base=0.30 + i / 100) for i in range(10)]


@pytest.fixture
def market(s3_env: dict[str, str], s3_store: ObjectStore, tmp_path: Path) -> Iterator[Lab]:
    with lab(s3_store, tmp_path, offers=MARKET) as found:
        yield found


def events(handle_events: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in handle_events if e["event"] == name]


def test_every_rental_fault_on_the_way_then_one_clean_success(market: Lab) -> None:
    """Offers gone (404, 410, race), an unsure create, a refused create that left an instance,
    an OCI start failure and an image pull failure, plus 429s and 5xx: the launch works
    through all of it, marks the two broken hosts, and bills only what it must."""
    spec = with_data(market.store, tiny_spec("lt-flaky"))
    fake = market.fake
    fake.inject("create", "http_503", call=1, times=2)  # unsure: maybe created, look by label
    fake.inject("create", "offer_gone_404", call=3)
    fake.inject("create", "offer_gone_410", call=4)
    fake.inject("create", "offer_race", call=5)
    fake.inject("create", "bid_too_low", call=6)  # refused, but an instance was left behind
    fake.inject("create", "oci_fail", call=7)
    fake.inject("create", "pull_fail", call=8)
    fake.inject("search", "http_502")
    # More than the client absorbs (3 SDK attempts in each of 4 rounds), twice:
    fake.inject("show", "rate_limit_detail", call=2, times=13)
    fake.inject("show", "http_504", call=20, times=13)
    fake.inject("logs", "rate_limit_text", times=3)

    handle = market.launch(spec)
    result = handle.wait()

    assert result.outcome == "succeeded" and result.exit_code == 0
    seen = handle.events
    assert len(events(seen, "create_unsure")) == 2  # one per create: neither is sent again
    assert len(events(seen, "create_not_found")) == 2
    assert len(events(seen, "offer_gone")) == 3
    rejected = events(seen, "create_rejected")
    assert len(rejected) == 1 and fake.ledger().entries[int(str(rejected[0]["instance_id"]))]
    assert len(events(seen, "poll_failed")) >= 2
    assert [a["outcome"] for a in result.attempts] == ["retry", "retry", "succeeded"]
    assert "OCI runtime create failed" in result.attempts[0]["reason"]
    assert "pull access denied" in result.attempts[1]["reason"]
    bad = BadHosts(market.tmp / "bad-hosts.json").machines()
    assert {result.attempts[0]["machine_id"], result.attempts[1]["machine_id"]} == bad
    assert market.creates() == 9 and result.cost_usd > 0
    text = market.human.getvalue()
    assert "offer 8000003 is gone; taking the next one" in text
    assert f"create refused; instance {rejected[0]['instance_id']} destroyed" in text
    market.assert_clean()


UNSURE = {"timeout_s": 2.0, "create_settle_s": 3.0}
"""Client settings for the unanswered-create tests: a late create lands inside the window."""


@pytest.mark.parametrize("fault", ["late", "lost_answer_502", "lost_answer_500", "lost_connection"])
def test_a_create_without_a_clear_answer_rents_one_instance_which_alone_runs_the_job(
    market: Lab, fault: str
) -> None:
    """The create is processed, but its answer comes after the client's timeout, is a gateway
    error page or a 500, or never comes: one create request, the instance it made found by
    its label and watched to success, nothing live when the launcher returns."""
    spec = with_data(market.store, tiny_spec(f"lt-unsure-{fault.replace('_', '-')}"))
    market.fake.inject("create", late(3.0) if fault == "late" else fault)
    handle = market.launch(spec, client=UNSURE)
    result = handle.wait()
    assert market.fake.live_instances() == []  # at once, not after the containers' own exit
    assert result.outcome == "succeeded"
    assert market.creates() == len(result.attempts) == 1
    assert len(market.ever_created()) == 1 == len(market.containers.outputs)
    assert result.attempts[0]["instance_id"] == market.ever_created()[0]
    renting = [e["event"] for e in handle.events if e["event"].startswith(("creat", "rent"))]
    assert renting == ["creating", "create_unsure", "create_found"]
    market.assert_clean()


def test_a_late_instance_of_an_interrupted_launch_is_destroyed_by_the_launcher(
    market: Lab,
) -> None:
    """Ctrl-C while the launcher waits for the instance of an unanswered create: before it
    returns, it waits out the create's window and destroys what appeared, with its own key."""
    spec = with_data(market.store, tiny_spec("lt-unsure-cancel"))
    market.fake.inject("create", late(2.5))
    client = {"timeout_s": 1.0, "create_settle_s": 2.0}

    def interrupt_once_unsure() -> None:
        wait_for(
            lambda: market.reporter and _seen(market.reporter.events, "create_unsure"), timeout=240
        )
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_unsure, daemon=True).start()
    with pytest.raises(Cancelled):
        market.launch(spec, client=client)
    assert market.fake.live_instances() == []
    made = market.ever_created()
    assert len(made) == 1 and market.destroyed_by_account() == set(made)
    market.assert_clean()


def test_a_create_that_lands_after_its_window_is_destroyed_by_the_launcher_on_ctrl_c(
    market: Lab,
) -> None:
    """The unanswered create makes its instance only after the launcher stopped looking for
    it and rented the next offer; then Ctrl-C. The final cleanup looks for the job's label
    once more and destroys that instance with the account key: it is not left to its
    container's own dead-man switch."""
    spec = with_data(market.store, tiny_spec("lt-unsure-late-cancel", train={"epochs": 40}))
    market.fake.inject("create", late(3.0))

    def interrupt_once_it_appears() -> None:
        wait_for(lambda: len(market.ever_created()) == 2, timeout=60)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_it_appears, daemon=True).start()
    handle = market.launch(spec, client={"timeout_s": 1.0, "create_settle_s": 0.5})
    with pytest.raises(Cancelled):
        handle.wait()
    assert market.fake.live_instances() == []
    made = market.ever_created()
    assert market.creates() == 2 and len(made) == 2
    assert market.destroyed_by_account() == set(made)
    market.assert_clean()


def test_ctrl_c_while_a_create_is_in_flight_destroys_what_it_made(market: Lab) -> None:
    """Ctrl-C while the create request waits for its answer: Vast.ai may carry it out all the
    same, so the launcher waits out the create's window, looks for the job's label and
    destroys the instance that appeared, with its own key, before it returns."""
    spec = with_data(market.store, tiny_spec("lt-create-cancel"))
    market.fake.inject("create", late(1.5))
    main = threading.get_ident()

    def interrupt_while_creating() -> None:
        wait_for(lambda: market.creates() == 1, timeout=240)  # after the proof
        time.sleep(0.3)  # the request is on the server, its answer not yet sent
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt_while_creating, daemon=True).start()
    with pytest.raises(Cancelled):
        market.launch(spec, client={"timeout_s": 10.0, "create_settle_s": 3.0})
    made = market.ever_created()
    assert market.fake.live_instances() == []
    assert market.creates() == 1 and len(made) == 1
    assert market.destroyed_by_account() == set(made)
    assert _seen(market.reporter.events, "sweep_wait")
    market.assert_clean()


def test_a_create_that_lands_after_its_window_never_trains_the_job_twice(market: Lab) -> None:
    """Beyond what any timeout covers: the unanswered create makes its instance only after
    the launcher rented the next offer. Both containers start; the job's lease lets one of
    them train, the other writes nothing and destroys itself, and the launcher watches the
    one that holds the job. Nothing is live when it returns."""
    spec = with_data(market.store, tiny_spec("lt-unsure-twice", train={"epochs": 40}))
    market.fake.inject("create", late(5.0))
    handle = market.launch(spec, client={"timeout_s": 1.0, "create_settle_s": 0.5})
    result = handle.wait()
    assert market.fake.live_instances() == []
    assert result.outcome == "succeeded"
    assert market.creates() == 2 and len(market.ever_created()) == 2
    outputs = market.containers.outputs
    trained = [i for i, lines in outputs.items() if any("committed" in line for line in lines)]
    refused = [i for i, lines in outputs.items() if any("not this container's" in x for x in lines)]
    # the other container refused the job, or was destroyed before it started at all
    others = [i for i in outputs if i not in trained]
    assert len(trained) == 1 and all(i in refused or not outputs[i] for i in others), outputs
    logs = market.store.list(Layout().job("lt-unsure-twice").logs)
    assert [o.loc.name for o in logs] == [f"{trained[0]}.log"]  # only one container wrote
    market.assert_clean()


def _seen(found: list[dict[str, object]], name: str) -> bool:
    return any(e["event"] == name for e in found)


def test_an_instance_that_is_not_what_was_rented_is_destroyed_at_once(market: Lab) -> None:
    """Read back right after create: a price above the offer's (or the wrong rental type)."""
    spec = with_data(market.store, tiny_spec("lt-price", limits={"max_attempts": 1}))
    row = {
        "id": 31_000_001,
        "start_date": 1.0,
        "extra_env": [],
        "actual_status": None,
        "intended_status": "running",
        "cur_state": "running",
        "next_state": "running",
        "dph_total": 9.5,
        "is_bid": False,
        "machine_id": 40_001,
        "label": "quantlab:lt-price",
    }
    market.fake.inject("show", Fault(status=200, body={"instances": row}))  # fmt: skip
    handle = market.launch(spec)
    with pytest.raises(ProvisioningError, match=r"costs \$9\.5000/h, the offer said \$0\.3083/h"):
        handle.wait()
    assert market.creates() == 1
    market.assert_clean()


def test_no_other_offer_is_rented_while_an_instance_cannot_be_destroyed(market: Lab) -> None:
    spec = with_data(market.store, tiny_spec("lt-undead"))
    market.fake.inject("create", "oci_fail")
    market.fake.inject("destroy", "http_502", times=12)  # every try of one destroy call (3 × 4)
    handle = market.launch(spec)
    with pytest.raises(InfraError) as caught:
        handle.wait()
    assert exit_code_of(caught.value) == EXIT_INFRA
    assert "could not be destroyed so no other offer is rented" in str(caught.value)
    assert "vastai destroy instance 31000001" in str(caught.value)
    assert market.creates() == 1
    market.assert_clean()  # the cleanup on the way out got it


def test_stuck_loading_hits_the_provisioning_deadline_then_the_launch_gives_up(
    market: Lab,
) -> None:
    spec = with_data(market.store, tiny_spec(
        "lt-stuck", limits={"provision_timeout_minutes": 0.01, "max_attempts": 2}))  # fmt: skip
    market.fake.inject("create", "stuck_loading", times=2)
    handle = market.launch(spec)
    with pytest.raises(ProvisioningError) as caught:
        handle.wait()
    assert exit_code_of(caught.value) == EXIT_PROVISIONING
    assert "no instance started the job in 2 attempt(s)" in str(caught.value)
    assert "no status from the container within 0.01 min" in str(caught.value)
    assert handle.result is not None and handle.result.outcome == "provisioning_failed"
    machines = {a["machine_id"] for a in handle.result.attempts}
    assert len(machines) == 2 and machines <= BadHosts(market.tmp / "bad-hosts.json").machines()
    assert market.creates() == 2
    market.assert_clean()


def test_outbid_then_host_lost_gives_up_as_an_infrastructure_failure(market: Lab) -> None:
    spec = with_data(market.store, tiny_spec(
        "lt-lost", resources={"interruptible": True}, limits={"max_attempts": 2},
        train={"epochs": 10_000}))  # fmt: skip
    handle = market.launch(spec)
    status = Layout().job("lt-lost").status

    def interfere() -> None:
        first = wait_for(lambda: _row_of(market, 0, "running"), timeout=30)
        market.fake.outbid(first)
        second = wait_for(lambda: _row_of(market, 1, "running"), timeout=30)
        wait_for(lambda: _container_of(market.store, status) == str(second), timeout=30)
        market.fake.host_lost(second)

    thread = threading.Thread(target=interfere, daemon=True)
    thread.start()
    with pytest.raises(InfraError) as caught:
        handle.wait()
    thread.join(5)
    assert exit_code_of(caught.value) == EXIT_INFRA
    message = str(caught.value)
    assert message.startswith("the job lost its host on every attempt: #1 instance")
    assert "was outbid: a higher bid took the machine (or the credit ran out); #2" in message
    assert message.endswith(": host offline, it stopped reporting")
    sent = market.fake.requests_to("create")[0].body
    assert sent["price"] == pytest.approx(MARKET[0]["min_bid"] * 1.1, abs=0.001)
    market.assert_clean()


def _row_of(market: Lab, n: int, actual: str) -> int | None:
    """The id of the n-th instance once its actual_status is `actual`."""
    ids = sorted(market.fake.ledger().entries)
    row = market.fake.instance(ids[n]) if len(ids) > n else None
    return ids[n] if row is not None and row["actual_status"] == actual else None


def _container_of(store: ObjectStore, loc: Loc) -> str | None:
    try:
        return str(json.loads(store.get(loc))["container_id"])
    except (ObjectNotFound, ValueError, KeyError):
        return None


def test_a_job_that_fails_reports_the_reason_and_is_not_retried(market: Lab) -> None:
    spec = tiny_spec("lt-fail", data={"non_finite": "fail"})
    make_dataset(market.store, spec, replace(TINY_DATA, feature_nan_rate=0.05))
    handle = market.launch(spec)
    with pytest.raises(JobFailed) as caught:
        handle.wait()
    assert exit_code_of(caught.value) == EXIT_JOB_FAILED
    assert "job lt-fail failed: the job reported:" in str(caught.value)
    assert "non-finite" in str(caught.value) or "NaN" in str(caught.value)
    assert handle.result is not None and handle.result.outcome == "failed"
    assert market.creates() == 1
    market.assert_clean()


def test_the_result_sentinel_alone_ends_the_job(
    s3_env: dict[str, str], s3_store: ObjectStore, tmp_path: Path
) -> None:
    """A container that only prints its last line (no status.json yet) is still understood."""
    sentinel = 'QUANTLAB_RESULT {"exit_code": 6, "outcome": "failed", "reason": "loss is NaN"}'
    spec = with_data(s3_store, tiny_spec("lt-sentinel"))
    with (
        running_fake_vast(
            timings=FAST, script=[(0.0, "booting"), (0.1, sentinel)], script_exits=False
        ) as fake,
        env_var("VAST_API_KEY", fake.api_key),
        env_var(ALLOW_LOCAL_STORE, "1"),  # the loopback store: the "container" runs here
    ):
        handle = Lab(fake, Containers(), s3_store, tmp_path).launch(spec)
        with pytest.raises(JobFailed, match="the job reported: loss is NaN"):
            handle.wait()
        assert fake.live_instances() == [] and fake.ledger().still_billing == []


@pytest.mark.parametrize("limit", ["budget", "runtime"])
def test_money_and_runtime_limits_destroy_the_instance(market: Lab, limit: str) -> None:
    if limit == "budget":
        spec = tiny_spec("lt-budget", limits={"max_cost_usd": 0.0001})  # ~1 s at $0.30/h
    else:
        spec = tiny_spec("lt-runtime", limits={"max_runtime_minutes": 0.01},
                         train={"epochs": 10_000})  # fmt: skip
    with_data(market.store, spec)
    handle = market.launch(spec)
    with pytest.raises(LimitExceeded) as caught:
        handle.wait()
    assert exit_code_of(caught.value) == EXIT_LIMIT
    expected = "max_cost_usd reached" if limit == "budget" else "max_runtime"
    assert expected in str(caught.value)
    assert handle.result is not None and handle.result.outcome == "limit_exceeded"
    if limit == "budget":
        assert handle.result.cost_usd >= 0.0001
        assert market.fake.ledger().total_cost < 0.001
    market.assert_clean()
