"""VastClient through the real `vastai` SDK against the fake Vast.ai server over HTTP."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.vast_faults import Fault, late, rate_limited, slow_logs
from tests.fakes.vast_offers import make_offer
from tests.fakes.vast_server import FakeVast, Timings, running_fake_vast
from tests.fakes.vast_state import InstanceView
from trainer.errors import InfraError
from trainer.launcher.vast import (
    CreateRejected,
    InstanceState,
    OfferGone,
    VastApiError,
    VastAuthError,
    VastClient,
    VastRateLimited,
    normalize_status,
    redact,
)

FAST = Timings(t_sched=0.02, t_pull=0.05, t_stop=0.02, logs_delay=0.1)
SECRET_ENV = "s3cr3t-env-value-7731"


@pytest.fixture
def fake() -> Iterator[FakeVast]:
    with running_fake_vast(timings=FAST) as server:
        yield server


def client(fake: FakeVast, **options: Any) -> VastClient:
    settings: dict[str, Any] = {
        "timeout_s": 5, "retries": 2, "backoff_s": 0.01,
        "logs_wait_s": 1.0, "logs_poll_s": 0.05,
    }  # fmt: skip
    settings.update(options)
    key = settings.pop("api_key", fake.api_key)
    return VastClient(key, fake.url, **settings)


def rent(vast: VastClient, offer_id: int = 7_100_001, **options: Any) -> int:
    settings: dict[str, Any] = {
        "image": "ghcr.io/acme/train:1", "disk_gb": 20, "label": "job-1",
        "env": {"JOB_ID": "j-1", "TOKEN": SECRET_ENV}, "onstart": "/bin/sh",
        "args": ["-c", "python -m trainer"],
    }  # fmt: skip
    settings.update(options)
    return vast.create_instance(offer_id, **settings).instance_id


def wait_state(vast: VastClient, instance_id: int, *states: InstanceState) -> InstanceState:
    deadline = time.monotonic() + 30  # a condition, not a schedule: a loaded machine is slow
    while time.monotonic() < deadline:
        found = vast.show_instance(instance_id)
        state = found.state if found else InstanceState.GONE
        if state in states:
            return state
        time.sleep(0.01)
    raise AssertionError(f"instance {instance_id} never reached {states}")


# -- the happy path ------------------------------------------------------------------------
def test_search_returns_typed_offers_and_sends_the_sdk_defaults(fake: FakeVast) -> None:
    vast = client(fake)
    offers = vast.search_offers({"gpu_name": {"eq": "RTX 4090"}}, limit=5, storage_gb=40)
    assert [o.id for o in offers] == [7_100_002, 7_100_001, 7_100_004]
    assert offers[0].gpu_name == "RTX 4090" and offers[0].verified and offers[0].gpu_ram_mb == 24564
    body = fake.requests_to("search")[-1].body
    assert body["rented"] == {"eq": False} and body["verified"] == {"eq": True}
    assert body["allocated_storage"] == 40 and body["limit"] == 5
    assert body["order"] == [["dph_total", "asc"]] and body["type"] == "on-demand"
    bids = vast.search_offers({"num_gpus": {"eq": 1}}, offer_type="bid", order=[("min_bid", "asc")])
    assert bids[0].dph_total < bids[0].min_bid + 0.01


def test_create_show_logs_destroy_with_a_running_job() -> None:
    def job(view: InstanceView) -> None:
        view.log(f"training {view.env['JOB_ID']}")
        view.log("JOB_EXIT_CODE=0")

    with running_fake_vast(timings=FAST, on_running=job) as fake:
        vast = client(fake)
        created = vast.create_instance(
            7_100_001, image="img:1", disk_gb=20, env={"JOB_ID": "j-9"}, label="job-9",
            onstart="/bin/sh", args=["-c", "run"],
        )  # fmt: skip
        assert "instance_api_key" not in repr(created)
        assert created.instance_api_key == fake.instance_key(created.instance_id)
        sent = fake.requests_to("create")[-1].body
        assert sent["runtype"] == "args" and sent["args"] == ["-c", "run"]
        assert sent["onstart"] == "/bin/sh" and sent["env"] == {"JOB_ID": "j-9"}
        assert sent["cancel_unavail"] is True and sent["price"] is None
        first = vast.show_instance(created.instance_id)
        assert first is not None and first.state is InstanceState.PENDING
        assert first.label == "job-9" and first.gpu_name == "RTX 4090"
        wait_state(vast, created.instance_id, InstanceState.EXITED)
        assert vast.logs(created.instance_id, tail=1) == "JOB_EXIT_CODE=0\n"
        vast.destroy_instance(created.instance_id)
        assert vast.show_instance(created.instance_id) is None
        assert fake.live_instances() == [] and fake.ledger().still_billing == []


def test_list_follows_every_page_and_filters_by_label() -> None:
    offers = [make_offer(500 + i, "RTX 3090") for i in range(28)]
    with running_fake_vast(offers=offers, timings=FAST) as fake:
        vast = client(fake)
        ids = [rent(vast, 500 + i, label="mine" if i < 27 else "other") for i in range(28)]
        assert [i.id for i in vast.list_instances()] == ids
        assert [i.id for i in vast.list_instances("mine")] == ids[:27]
        pages = fake.requests_to("list")[-2:]
        assert "after_token" not in pages[0].query and pages[1].query["after_token"]
        assert pages[0].query["select_filters"] == '{"label": {"eq": "mine"}}'
        assert vast.list_instances("nobody") == []


# -- errors ----------------------------------------------------------------------------------
def test_success_false_in_a_2xx_body_raises(fake: FakeVast) -> None:
    vast = client(fake)
    instance_id = rent(vast)
    body = {"success": False, "error": "missing_billing", "msg": "Add a payment method."}
    fake.inject("destroy", Fault(status=200, body=body))
    with pytest.raises(VastApiError, match="missing_billing: Add a payment method") as caught:
        vast.destroy_instance(instance_id)
    assert caught.value.status == 200


def test_create_error_with_new_contract_destroys_that_instance_first(fake: FakeVast) -> None:
    vast = client(fake)
    with pytest.raises(CreateRejected, match="was destroyed") as caught:
        rent(vast, bid_price=0.01)
    assert caught.value.cleaned_up and caught.value.error == "invalid_price"
    destroyed = fake.requests_to("destroy")
    assert [r.path for r in destroyed] == [f"/api/v0/instances/{caught.value.instance_id}/"]
    assert fake.live_instances() == []


def test_create_rejected_says_so_when_the_cleanup_fails(fake: FakeVast) -> None:
    vast = client(fake)
    fake.inject("destroy", "not_authorized")
    with pytest.raises(CreateRejected, match="destroy it by hand") as caught:
        rent(vast, bid_price=0.01)
    assert not caught.value.cleaned_up
    assert [r["id"] for r in fake.live_instances()] == [caught.value.instance_id]


@pytest.mark.parametrize("fault", ["offer_gone_404", "offer_gone_410", "offer_race"])
def test_offer_gone(fake: FakeVast, fault: str) -> None:
    fake.inject("create", fault)
    with pytest.raises(OfferGone, match="no_such_ask") as caught:
        rent(client(fake))
    assert caught.value.status in (404, 410)
    assert fake.calls("create") == 1 and fake.live_instances() == []


def test_destroy_of_a_gone_instance_is_success(fake: FakeVast) -> None:
    vast = client(fake)
    instance_id = rent(vast)
    vast.destroy_instance(instance_id)
    vast.destroy_instance(instance_id)
    fake.inject("destroy", Fault(status=404, body={"success": False, "error": "not_found"}))
    vast.destroy_instance(instance_id)
    gone = {"success": False, "error": "no_such_instance", "msg": "gone"}
    fake.inject("destroy", Fault(status=200, body=gone))
    vast.destroy_instance(instance_id)
    assert fake.calls("destroy") == 4


@pytest.mark.parametrize("style", ["detail", "text", "json"])
def test_rate_limits_are_retried_with_backoff(fake: FakeVast, style: str) -> None:
    fake.inject("search", rate_limited(style), times=2)
    assert client(fake).search_offers({}, limit=1)
    assert fake.calls("search") == 3


def test_search_quota_is_not_retried(fake: FakeVast) -> None:
    fake.inject("search", "search_quota", times=5)
    with pytest.raises(VastRateLimited, match=r"daily search quota.*resets at 20"):
        client(fake, sdk_attempts=3).search_offers({})
    assert fake.calls("search") == 1


def test_own_retries_stack_on_the_sdk_retries(fake: FakeVast) -> None:
    fake.inject("show", "rate_limit_detail", times=4)
    assert client(fake, sdk_attempts=3, retries=1).show_instance(1) is None
    assert fake.calls("show") == 5
    fake.inject("show", "rate_limit_text", times=10)
    with pytest.raises(VastRateLimited, match="still rate-limited"):
        client(fake, retries=2).show_instance(1)
    assert fake.calls("show") == 5 + 3 * 3


def test_server_errors_and_dropped_connections_are_retried_a_bounded_number_of_times(
    fake: FakeVast,
) -> None:
    vast = client(fake)
    fake.inject("show", "http_502", times=2)
    assert vast.show_instance(1) is None
    fake.inject("list", "drop_connection")
    assert vast.list_instances() == []
    fake.inject("show", "http_504", times=9)
    with pytest.raises(VastApiError, match="HTTP 504") as caught:
        vast.show_instance(1)
    assert caught.value.status == 504 and fake.calls("show") == 3 + 3 * 3


@pytest.mark.parametrize(
    "fault", ["drop_connection", "lost_connection", "lost_answer_502", "lost_answer_500", "late"]
)
def test_a_create_is_sent_once_whatever_its_answer(fake: FakeVast, fault: str) -> None:
    """With the SDK's default retries in place: a create whose answer is lost, a gateway
    error page, or an answer slower than the timeout is never sent again."""
    if fault == "late":
        fake.inject("create", late(1.5))
        vast = client(fake, timeout_s=0.5)
    else:
        fake.inject("create", fault)
        vast = client(fake)
    with pytest.raises(VastApiError, match="labelled 'job-1'") as caught:
        rent(vast)
    assert caught.value.status in (None, 500, 502)
    assert fake.calls("create") == 1
    if fault != "drop_connection":  # the others did rent, and exactly once
        made = wait_for_instances(fake, 1)
        assert [i["label"] for i in made] == ["job-1"]
    assert vast.create_settle_s == (0.5 if fault == "late" else 5)  # the request timeout


def test_a_rate_limited_create_is_sent_again(fake: FakeVast) -> None:
    """A 429 is answered before anything is done: the next round may create."""
    fake.inject("create", "rate_limit_json")
    assert rent(client(fake), 7_100_002) > 0
    assert fake.calls("create") == 2 and len(fake.live_instances()) == 1


def wait_for_instances(fake: FakeVast, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while len(fake.live_instances()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return fake.live_instances()


def test_wrong_key_is_an_auth_error_that_names_the_variable(fake: FakeVast) -> None:
    with pytest.raises(VastAuthError, match="check VAST_API_KEY") as caught:
        client(fake, api_key="not-the-key-4242").list_instances()
    assert caught.value.status == 401 and "not-the-key-4242" not in str(caught.value)
    with pytest.raises(VastAuthError, match="VAST_API_KEY"):
        VastClient("", fake.url)


def test_logs_return_empty_when_not_ready_without_blocking_for_long(fake: FakeVast) -> None:
    vast = client(fake, logs_wait_s=0.2)
    instance_id = rent(vast)
    fake.inject("logs", slow_logs(30))
    started = time.monotonic()
    assert vast.logs(instance_id) == ""
    assert time.monotonic() - started < 1.0
    fake.inject("logs", "logs_without_url")
    assert vast.logs(instance_id) == ""
    wait_state(vast, instance_id, InstanceState.EXITED)
    assert vast.logs(instance_id) == "job started\njob finished\n"


# -- redaction -------------------------------------------------------------------------------
def test_redact_replaces_every_secret_longest_first() -> None:
    text = "key abcdef and abcdefgh, short 1"
    assert redact(text, ["abcdef", "abcdefgh", "1", ""]) == "key [REDACTED] and [REDACTED], short 1"


def test_no_error_or_log_line_carries_the_key_or_an_env_value(
    fake: FakeVast, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vast = client(fake)
    instance_id = rent(vast)
    echo = f"rejected key {fake.api_key} with env {SECRET_ENV}"
    errors: list[Exception] = []
    for endpoint, action in [
        ("create", lambda: rent(vast, 7_100_002)),
        ("search", lambda: vast.search_offers({})),
        ("show", lambda: vast.show_instance(instance_id)),
        ("destroy", lambda: vast.destroy_instance(instance_id)),
        ("list", vast.list_instances),
    ]:
        fake.inject(endpoint, Fault(status=400, body={"error": "invalid_args", "msg": echo}))
        # 3 SDK attempts in each of 3 rounds; a create is sent once, whatever the answer
        times = 1 if endpoint == "create" else 9
        fake.inject(
            endpoint, Fault(status=503, body=echo), call=fake.calls(endpoint) + 2, times=times
        )
        for _ in range(2):
            with pytest.raises(VastApiError) as caught:
                action()
            errors.append(caught.value)
    fake.inject("create", rate_limited("json"), times=3)
    with pytest.raises(VastRateLimited) as limited:
        rent(vast, 7_100_002)
    errors.append(limited.value)
    texts = [str(e) for e in errors] + [caplog.text]
    assert all("[REDACTED]" in str(e) for e in errors[:-1])
    for text in texts:
        assert fake.api_key not in text and SECRET_ENV not in text


def test_instance_key_is_redacted_too(fake: FakeVast) -> None:
    vast = client(fake)
    created = vast.create_instance(
        7_100_001, image="img", disk_gb=10, env={}, label="l", onstart=None, args=None
    )
    echo = {"error": "x", "msg": f"key {created.instance_api_key}"}
    fake.inject("show", Fault(status=400, body=echo))
    with pytest.raises(VastApiError) as caught:
        vast.show_instance(created.instance_id)
    assert created.instance_api_key not in str(caught.value)


# -- status mapping and packaging --------------------------------------------------------------
RUN = {"intended_status": "running", "cur_state": "running", "next_state": "running"}
STOPPED = {"intended_status": "stopped", "cur_state": "stopped", "next_state": "stopped"}


@pytest.mark.parametrize(("row", "state"), [
    (None, InstanceState.GONE),
    ({**RUN, "actual_status": None}, InstanceState.PENDING),
    ({**RUN, "actual_status": "created", "status_msg": None}, InstanceState.PENDING),
    ({**RUN, "actual_status": "loading", "status_msg": "Pulling image x"}, InstanceState.PENDING),
    ({**RUN, "actual_status": "scheduling"}, InstanceState.PENDING),
    ({**RUN, "actual_status": "frozen"}, InstanceState.PENDING),
    ({**RUN, "actual_status": "something-new"}, InstanceState.PENDING),
    ({**RUN, "actual_status": "running"}, InstanceState.RUNNING),
    ({**RUN, "actual_status": "exited"}, InstanceState.EXITED),
    ({**STOPPED, "actual_status": "stopped"}, InstanceState.STOPPED_OUTBID),
    ({**STOPPED, "actual_status": "running"}, InstanceState.STOPPED_OUTBID),
    ({**RUN, "next_state": "stopped", "actual_status": "running"}, InstanceState.RUNNING),
    ({**RUN, "actual_status": "created",
      "status_msg": "x: OCI runtime create failed: exec: no such file"}, InstanceState.FAILED),
    ({**RUN, "actual_status": "loading",
      "status_msg": "Error response from daemon: pull access denied for x"}, InstanceState.FAILED),
    ({**RUN, "actual_status": "offline"}, InstanceState.LOST),
    ({**RUN, "actual_status": "unknown"}, InstanceState.LOST),
    ({"actual_status": None, "cur_state": "unloaded"}, InstanceState.GONE),
])  # fmt: skip
def test_normalize_status(row: dict[str, Any] | None, state: InstanceState) -> None:
    assert normalize_status(row) is state


def test_fake_scenarios_map_to_the_expected_states() -> None:
    with running_fake_vast(timings=FAST, script_exits=False) as fake:  # running until told
        check_scenarios(fake)


def check_scenarios(fake: FakeVast) -> None:
    vast = client(fake)
    fake.inject("create", "oci_fail")
    fake.inject("create", "pull_fail", call=2)
    oci, pull = rent(vast, 7_100_001), rent(vast, 7_100_002)
    bid = rent(vast, 7_100_005, bid_price=0.2, args=None)
    lost = rent(vast, 7_100_006)
    assert wait_state(vast, oci, InstanceState.FAILED) is InstanceState.FAILED
    assert wait_state(vast, pull, InstanceState.FAILED) is InstanceState.FAILED
    wait_state(vast, bid, InstanceState.RUNNING)
    fake.outbid(bid)
    assert wait_state(vast, bid, InstanceState.STOPPED_OUTBID) is InstanceState.STOPPED_OUTBID
    fake.host_lost(lost)
    assert wait_state(vast, lost, InstanceState.LOST) is InstanceState.LOST


def test_importing_the_module_does_not_import_vastai() -> None:
    code = "import sys, trainer.launcher.vast; print('vastai' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_missing_sdk_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vastai", None)
    with pytest.raises(InfraError, match=r"pip install 'quantlab-trainer\[launch\]'"):
        VastClient("some-key", "http://127.0.0.1:9")
