"""The fake Vast.ai server speaks the real wire format: search, lifecycle, logs, faults, billing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.fakes.vast_faults import rate_limited, slow_logs
from tests.fakes.vast_offers import make_offer
from tests.fakes.vast_server import FakeVast, Timings, running_fake_vast
from tests.fakes.vast_state import InstanceView

FAST = Timings(t_sched=0.02, t_pull=0.05, t_stop=0.02, logs_delay=0.1)
INSTANCE_FIELDS = {
    "id": int, "start_date": float, "extra_env": list, "ports": dict, "machine_id": int,
    "host_id": int, "gpu_name": str, "num_gpus": int, "disk_space": float, "dph_total": float,
    "is_bid": bool, "min_bid": float, "end_date": float, "uptime_mins": float, "ssh_host": str,
    "ssh_port": int, "public_ipaddr": str, "local_ipaddrs": str, "reliability2": float,
    "geolocation": str, "image_uuid": str, "image_runtype": str, "image_args": list,
    "intended_status": str, "cur_state": str, "next_state": str,
}  # fmt: skip
NULLABLE_FIELDS = ("actual_status", "status_msg", "label", "onstart")


@pytest.fixture
def fake() -> Iterator[FakeVast]:
    with running_fake_vast(timings=FAST) as server:
        yield server


@pytest.fixture
def busy() -> Iterator[FakeVast]:
    """A fake whose containers keep running until they are stopped or destroyed."""
    with running_fake_vast(timings=FAST, on_running=lambda view: view.killed.wait(30)) as server:
        yield server


def call(
    fake: FakeVast,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = "account",
    **params: Any,
) -> requests.Response:
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {fake.api_key if key == 'account' else key}"
    return requests.request(
        method, fake.url + path, json=body, headers=headers, params=params, timeout=5
    )


def search(fake: FakeVast, **body: Any) -> list[dict[str, Any]]:
    response = call(fake, "POST", "/api/v0/bundles/", body)
    assert response.status_code == 200, response.text
    offers: list[dict[str, Any]] = response.json()["offers"]
    return offers


def create(fake: FakeVast, offer_id: int = 7_100_001, **overrides: Any) -> requests.Response:
    body = {
        "client_id": "me",
        "image": "ghcr.io/acme/train:1",
        "env": {"JOB": "j-1"},
        "price": None,
        "disk": 20,
        "label": "job-1",
        "onstart": "/bin/sh",
        "runtype": "args",
        "args": ["-c", "train"],
        "cancel_unavail": True,
    }
    body.update(overrides)
    return call(fake, "PUT", f"/api/v0/asks/{offer_id}/", body)


def create_id(fake: FakeVast, offer_id: int = 7_100_001, **overrides: Any) -> int:
    response = create(fake, offer_id, **overrides)
    assert response.status_code == 200, response.text
    instance_id: int = response.json()["new_contract"]
    return instance_id


def row(fake: FakeVast, instance_id: int) -> dict[str, Any] | None:
    found: dict[str, Any] | None = call(
        fake, "GET", f"/api/v0/instances/{instance_id}/", owner="me"
    ).json()["instances"]
    return found


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def status_of(fake: FakeVast, instance_id: int) -> str | None:
    found = row(fake, instance_id)
    return None if found is None else found["actual_status"]


# -- search --------------------------------------------------------------------------------
def test_search_coerces_string_values_like_parse_query_sends_them(fake: FakeVast) -> None:
    offers = search(
        fake,
        verified={"eq": True},
        external={"eq": False},
        rentable={"eq": True},
        gpu_name={"eq": "RTX_4090"},
        num_gpus={"eq": "1"},
        reliability2={"gt": "0.98"},
        dph_total={"lt": "1.0"},
        order=[["score", "desc"]],
        type="on-demand",
        limit=5,
        allocated_storage=5.0,
    )
    assert [o["id"] for o in offers] == [7_100_001]


def test_default_filters_drop_unverified_external_and_rented_offers(fake: FakeVast) -> None:
    everything = {o["id"] for o in search(fake, gpu_name={"eq": "RTX 4090"})}
    assert everything == {7_100_001, 7_100_002, 7_100_003, 7_100_004, 7_100_011, 7_100_012}
    defaults = {
        "verified": {"eq": True},
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
    }
    kept = {o["id"] for o in search(fake, gpu_name={"eq": "RTX 4090"}, **defaults)}
    assert kept == {7_100_001, 7_100_002, 7_100_004}


@pytest.mark.parametrize(("filters", "expected"), [
    ({"gpu_name": {"in": ["A100_SXM4", "H100 SXM"]}, "num_gpus": {"gte": 8}}, {8, 10}),
    ({"gpu_name": {"notin": ["RTX 4090", "RTX 3090"]}, "num_gpus": {"lte": "1"}}, {7, 9}),
    ({"gpu_name": {"neq": "RTX 4090"}, "geolocation": {"eq": "US"}}, {6, 7, 8}),
    ({"geolocation": {"in": ["FI", "SE"]}}, {1, 9, 10}),
    ({"cuda_max_good": {"gte": "12.5"}}, {9, 10}),
    ({"inet_down": {"lt": 300}}, {6}),
    ({"no_such_column": {"eq": 1}, "num_gpus": {"eq": 8}}, {8, 10}),
])  # fmt: skip
def test_search_operators(fake: FakeVast, filters: dict[str, Any], expected: set[int]) -> None:
    """`expected` lists catalogue numbers: offer 7_100_0NN is NN."""
    assert {o["id"] - 7_100_000 for o in search(fake, **filters)} == expected


def test_search_orders_and_limits(fake: FakeVast) -> None:
    cheapest = search(fake, order=[["dph_total", "asc"]], limit=3)
    assert [o["id"] for o in cheapest] == [7_100_006, 7_100_005, 7_100_003]
    ranked = search(fake, gpu_name={"eq": "H100 SXM"}, order=[["num_gpus", "desc"]])
    assert [o["num_gpus"] for o in ranked] == [8, 1]


def test_bid_search_prices_from_min_bid_and_storage_is_included(fake: FakeVast) -> None:
    offer = fake.offer(7_100_001)
    storage_per_hour = offer["storage_cost"] * 50 / (30 * 24)
    on_demand = search(fake, id={"eq": 7_100_001}, allocated_storage=50)[0]
    bid = search(fake, id={"eq": 7_100_001}, type="bid", allocated_storage=50)[0]
    assert on_demand["dph_total"] == pytest.approx(offer["dph_base"] + storage_per_hour, abs=1e-5)
    assert bid["dph_total"] == pytest.approx(offer["min_bid"] + storage_per_hour, abs=1e-5)
    assert (on_demand["is_bid"], bid["is_bid"]) == (False, True)
    assert (
        search(fake, id={"eq": 7_100_001}, type="ondemand")[0]["dph_total"] < on_demand["dph_total"]
    )
    bad = call(fake, "POST", "/api/v0/bundles/", {"type": "spot"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_args"


def test_search_content_type_is_exactly_json_and_needs_no_key(fake: FakeVast) -> None:
    response = call(fake, "POST", "/api/v0/bundles/", {"limit": 1}, key=None)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"


def test_tests_can_bring_their_own_offers() -> None:
    offers = [make_offer(1, "RTX 4090", dph_base=0.5), make_offer(2, "RTX 3090", dph_base=0.2)]
    with running_fake_vast(offers=offers, timings=FAST) as fake:
        assert [o["id"] for o in search(fake, order=[["dph_total", "asc"]])] == [2, 1]


# -- auth ----------------------------------------------------------------------------------
def test_auth_messages_and_query_parameter_key(fake: FakeVast) -> None:
    missing = call(fake, "GET", "/api/v1/instances/", key=None)
    assert missing.status_code == 401
    assert missing.json() == {
        "success": False,
        "error": "auth_error",
        "msg": "This action requires login.",
    }
    wrong = call(fake, "GET", "/api/v1/instances/", key="nope")
    assert (wrong.status_code, wrong.json()["msg"]) == (401, "Invalid user key")
    by_query = call(fake, "GET", "/api/v1/instances/", key=None, api_key=fake.api_key)
    assert by_query.status_code == 200 and by_query.json()["instances"] == []


def test_wrong_key_status_is_configurable() -> None:
    with running_fake_vast(wrong_key_status=404) as fake:
        assert call(fake, "GET", "/api/v1/instances/", key="nope").status_code == 404


def test_unknown_paths(fake: FakeVast) -> None:
    nothing = call(fake, "GET", "/api/v0/nope/")
    assert (nothing.status_code, nothing.json()["error"]) == (404, "not_found")


# -- create and rows -----------------------------------------------------------------------
def test_create_answers_contract_and_key_and_rents_the_offer(fake: FakeVast) -> None:
    body = create(fake).json()
    assert body["success"] is True and isinstance(body["new_contract"], int)
    assert len(body["instance_api_key"]) >= 32
    assert fake.offer(7_100_001)["rented"] is True
    assert 7_100_001 not in {o["id"] for o in search(fake, rented={"eq": False})}
    again = create(fake, cancel_unavail=False)
    assert again.status_code == 404 and "no_such_ask" in again.json()["msg"]
    assert again.json()["ask_id"] == 7_100_001
    gone = create(fake)
    assert (gone.status_code, gone.json()["error"]) == (410, "no_such_ask")


@pytest.mark.parametrize("bad", [
    {"image": None}, {"disk": 4}, {"price": 0.0}, {"price": 500}, {"env": ["A=1"]},
    {"label": "x" * 300}, {"runtype": "telnet"}, {"args": "not-a-list"},
    {"args": ["x" * 5000]}, {"env": {"A": 1}},
])  # fmt: skip
def test_create_validation(fake: FakeVast, bad: dict[str, Any]) -> None:
    response = create(fake, **bad)
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_args", "invalid_price")
    assert fake.live_instances() == []


def test_instance_row_has_every_field_with_its_type(fake: FakeVast) -> None:
    slow = Timings(t_sched=30.0, t_pull=30.0)  # the row is read while still scheduling
    with running_fake_vast(timings=slow) as scheduling:
        instance_id = create_id(scheduling, env="-e A=1 -e B='x y' -p 8080:8080")
        found = row(scheduling, instance_id)
    assert found is not None
    for name, kind in INSTANCE_FIELDS.items():
        assert isinstance(found[name], kind), (name, found[name])
    for name in NULLABLE_FIELDS:
        assert name in found
    assert found["extra_env"] == [["A", "1"], ["B", "x y"]]
    assert found["image_runtype"] == "args"
    assert (found["actual_status"], found["ports"]) == (None, {})


def test_lifecycle_reaches_running_then_exits_in_args_mode(fake: FakeVast) -> None:
    instance_id = create_id(fake)
    wait_for(lambda: status_of(fake, instance_id) == "exited")
    found = row(fake, instance_id)
    assert found is not None
    assert (found["intended_status"], found["cur_state"]) == ("running", "running")
    assert fake.container_log(instance_id) == ["job started", "job finished"]
    # the phases it went through, each stamped when it was due, however late the polls came
    with fake.account.lock:
        phases = fake.account.instances[instance_id].phases
    assert [name for name, _ in phases] == ["provisioning", "loading", "running", "exited"]
    stamps = [at for _, at in phases]
    assert stamps[1] - stamps[0] == pytest.approx(FAST.t_sched)
    assert stamps[2] - stamps[1] == pytest.approx(FAST.t_pull)


def test_speed_knob_compresses_every_phase() -> None:
    slow = Timings(t_sched=0.4, t_pull=0.4)
    with running_fake_vast(timings=slow, speed=8.0) as fake:
        instance_id = create_id(fake)
        started = time.monotonic()
        wait_for(lambda: status_of(fake, instance_id) in ("running", "exited"))
        assert time.monotonic() - started < 0.4


# -- listing -------------------------------------------------------------------------------
def test_list_paginates_filters_by_label_and_rejects_bad_tokens() -> None:
    offers = [make_offer(100 + i, "RTX 4090") for i in range(30)]
    with running_fake_vast(offers=offers, timings=FAST) as fake:
        ids = [create_id(fake, 100 + i, label="a" if i % 3 else "b") for i in range(30)]

        def page(**extra: Any) -> dict[str, Any]:
            by_id = '[{"col": "id", "dir": "asc"}]'
            found = call(fake, "GET", "/api/v1/instances/", select_filters="{}",
                         order_by=by_id, limit=25, **extra)  # fmt: skip
            body: dict[str, Any] = found.json()
            return body

        first = page()
        assert len(first["instances"]) == 25 and first["total_instances"] == 30
        assert first["label_counts"] == {"a": 20, "b": 10}
        second = page(after_token=first["next_token"])
        assert second["next_token"] is None
        assert [r["id"] for r in first["instances"] + second["instances"]] == ids
        labelled = call(
            fake, "GET", "/api/v1/instances/", limit=100, select_filters='{"label": {"eq": "b"}}'
        ).json()
        assert {r["id"] for r in labelled["instances"]} == set(ids[::3])
        assert len(call(fake, "GET", "/api/v1/instances/", limit=0).json()["instances"]) == 5
        bad = call(fake, "GET", "/api/v1/instances/", after_token="garbage")
        assert bad.status_code == 400
        computed = call(
            fake, "GET", "/api/v1/instances/", select_filters='{"dph_total": {"lt": 1}}'
        )
        assert computed.status_code == 400 and "not a valid search key" in computed.json()["msg"]


# -- destroy and bids ------------------------------------------------------------------------
def test_destroy_twice_and_the_row_is_gone(fake: FakeVast) -> None:
    instance_id = create_id(fake)
    first = call(fake, "DELETE", f"/api/v0/instances/{instance_id}/", {})
    assert first.json()["success"] is True
    second = call(fake, "DELETE", f"/api/v0/instances/{instance_id}/", {})
    assert (second.status_code, second.json()["error"]) == (404, "no_such_instance")
    assert row(fake, instance_id) is None
    assert call(fake, "GET", "/api/v1/instances/").json()["instances"] == []
    assert fake.offer(7_100_001)["rentable"] is True


def test_outbid_stops_at_once_and_stops_billing(busy: FakeVast) -> None:
    fake = busy
    instance_id = create_id(fake, price=0.3)
    wait_for(lambda: status_of(fake, instance_id) == "running")
    fake.outbid(instance_id)
    found = row(fake, instance_id)
    assert found is not None
    triple = (found["intended_status"], found["cur_state"], found["next_state"])
    assert triple == ("stopped", "stopped", "stopped") and found["actual_status"] == "stopped"
    gpu_seconds = fake.ledger().entries[instance_id].gpu_seconds
    time.sleep(0.05)
    assert fake.ledger().entries[instance_id].gpu_seconds == gpu_seconds


def test_bid_below_min_bid_leaves_a_stopped_instance_and_an_error(fake: FakeVast) -> None:
    response = create(fake, price=0.01)
    body = response.json()
    assert (response.status_code, body["error"]) == (400, "invalid_price")
    found = row(fake, body["new_contract"])
    assert found is not None and found["cur_state"] == found["intended_status"] == "stopped"
    assert [r["id"] for r in fake.live_instances()] == [body["new_contract"]]


# -- failure scenarios -----------------------------------------------------------------------
@pytest.mark.parametrize(("fault", "actual", "text"), [
    ("pull_fail", "loading", "pull access denied"),
    ("oci_fail", "created", ": OCI runtime create failed: "),
    ("stuck_loading", "loading", "Pulling image"),
])  # fmt: skip
def test_instance_scenarios(fake: FakeVast, fault: str, actual: str, text: str) -> None:
    fake.inject("create", fault)
    instance_id = create_id(fake)
    time.sleep(FAST.t_sched + FAST.t_pull + 0.05)
    found = row(fake, instance_id)
    assert found is not None and found["actual_status"] == actual
    assert text in found["status_msg"]
    assert fake.ledger().entries[instance_id].gpu_seconds == 0


def test_host_lost(fake: FakeVast) -> None:
    instance_id = create_id(fake)
    fake.host_lost(instance_id)
    assert status_of(fake, instance_id) == "offline"
    other = create_id(fake, 7_100_002)
    fake.host_lost(other, "unknown")
    time.sleep(0.1)
    assert status_of(fake, other) == "unknown"


def test_unschedulable_on_demand(fake: FakeVast) -> None:
    fake.inject("create", "unschedulable", times=2)
    assert create(fake, cancel_unavail=True).status_code == 410
    instance_id = create_id(fake, cancel_unavail=False)
    found = row(fake, instance_id)
    assert found is not None and found["cur_state"] == "stopped" and found["actual_status"] is None


def test_low_balance_stops_everything_and_refuses_creates(busy: FakeVast) -> None:
    fake = busy
    instance_id = create_id(fake)
    wait_for(lambda: status_of(fake, instance_id) == "running")
    fake.set_balance(0.0)
    assert status_of(fake, instance_id) == "stopped"
    refused = create(fake, 7_100_002)
    assert (refused.status_code, refused.json()["error"]) == (400, "insufficient_credit")


# -- fault injection -------------------------------------------------------------------------
@pytest.mark.parametrize(("style", "kind", "marker"), [
    ("detail", "application/json", "threshold="),
    ("text", "text/plain", "API requests too frequent"),
    ("json", "application/json", "rate_limit_exceeded"),
    ("search_quota", "application/json", "search_quota_exceeded"),
])  # fmt: skip
def test_rate_limit_bodies(fake: FakeVast, style: str, kind: str, marker: str) -> None:
    fake.inject("search", rate_limited(style, retry_after=1 if style == "json" else None))
    response = call(fake, "POST", "/api/v0/bundles/", {})
    assert response.status_code == 429
    assert response.headers["Content-Type"] == kind and marker in response.text
    assert ("Retry-After" in response.headers) == (style == "json")
    assert ("X-RateLimit-Reset" in response.headers) == (style == "search_quota")
    assert call(fake, "POST", "/api/v0/bundles/", {}).status_code == 200


def test_faults_target_call_numbers_and_repeat(fake: FakeVast) -> None:
    fake.inject("show", "http_503", call=2, times=2)
    codes = [call(fake, "GET", "/api/v0/instances/5/").status_code for _ in range(5)]
    assert codes == [200, 503, 503, 200, 200]
    assert fake.calls("show") == 5


def test_dropped_connection(fake: FakeVast) -> None:
    fake.inject("list", "drop_connection")
    with pytest.raises(requests.ConnectionError):
        call(fake, "GET", "/api/v1/instances/")
    assert call(fake, "GET", "/api/v1/instances/").ok


@pytest.mark.parametrize(("fault", "status", "error"), [
    ("offer_gone_404", 404, "invalid_args"),
    ("offer_gone_410", 410, "no_such_ask"),
    ("offer_race", 410, "no_such_ask"),
])  # fmt: skip
def test_offer_gone_variants_also_take_the_offer(
    fake: FakeVast, fault: str, status: int, error: str
) -> None:
    fake.inject("create", fault)
    response = create(fake)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert response.json()["ask_id"] == 7_100_001 and "no_such_ask" in response.json()["msg"]
    assert fake.offer(7_100_001)["rented"] is True and fake.live_instances() == []


# -- logs ------------------------------------------------------------------------------------
def test_logs_result_url_is_404_xml_then_the_tail() -> None:
    def job(view: InstanceView) -> None:
        for i in range(5):
            view.log(f"step {i}")

    with running_fake_vast(timings=FAST, on_running=job) as server:
        instance_id = create_id(server)
        wait_for(lambda: status_of(server, instance_id) == "exited")
        body = call(
            server, "PUT", f"/api/v0/instances/request_logs/{instance_id}/", {"tail": "2"}
        ).json()
        url = body["result_url"]
        assert url.startswith(server.url)
        early = requests.get(url, timeout=5)
        assert early.status_code == 404 and "<Code>NoSuchKey</Code>" in early.text
        late = wait_for(lambda: (r := requests.get(url, timeout=5)).ok and r)
        assert late.headers["Content-Type"] == "text/plain"
        assert late.text == "step 3\nstep 4\n"
        assert "Authorization" not in server.requests_to("log_file")[-1].headers
        filtered = call(
            server, "PUT", f"/api/v0/instances/request_logs/{instance_id}/", {"filter": "step [02]"}
        ).json()["result_url"]
        assert wait_for(lambda: (r := requests.get(filtered, timeout=5)).ok and r).text == (
            "step 0\nstep 2\n"
        )
        daemon = call(
            server, "PUT", f"/api/v0/instances/request_logs/{instance_id}/", {"daemon_logs": "true"}
        ).json()["result_url"]
        assert (
            "Pulling image"
            in wait_for(lambda: (r := requests.get(daemon, timeout=5)).ok and r).text
        )
        unknown = call(server, "PUT", "/api/v0/instances/request_logs/1/", {})
        assert (unknown.status_code, unknown.json()["error"]) == (404, "invalid_id")


def test_log_faults(fake: FakeVast) -> None:
    instance_id = create_id(fake)
    fake.inject("logs", "logs_without_url")
    body = call(fake, "PUT", f"/api/v0/instances/request_logs/{instance_id}/", {}).json()
    assert body["success"] is True and "result_url" not in body
    fake.inject("logs", slow_logs(5.0))
    url = call(fake, "PUT", f"/api/v0/instances/request_logs/{instance_id}/", {}).json()[
        "result_url"
    ]
    time.sleep(FAST.logs_delay + 0.05)
    assert requests.get(url, timeout=5).status_code == 404


# -- jobs, container keys, requests log ---------------------------------------------------
def test_job_callback_sees_env_and_destroys_itself_with_its_own_key() -> None:
    seen: dict[str, str] = {}

    def job(view: InstanceView) -> None:
        seen.update(view.env)
        view.log("working")
        key = view.env["CONTAINER_API_KEY"]
        url = f"{view.api_url}/api/v0/instances/{view.env['CONTAINER_ID']}/"
        requests.delete(url, json={}, headers={"Authorization": f"Bearer {key}"}, timeout=5)

    with running_fake_vast(timings=FAST, on_running=job) as server:
        instance_id = create_id(server)
        wait_for(lambda: row(server, instance_id) is None)
        assert seen["JOB"] == "j-1" and seen["CONTAINER_ID"] == str(instance_id)
        destroy = server.requests_to("destroy")[-1]
        assert destroy.headers["Authorization"] == f"Bearer {server.instance_key(instance_id)}"
        assert server.live_instances() == []


def test_instance_key_is_scoped_to_its_own_instance(fake: FakeVast) -> None:
    mine, other = create_id(fake), create_id(fake, 7_100_002)
    key = fake.instance_key(mine)
    assert call(fake, "DELETE", f"/api/v0/instances/{other}/", {}, key).status_code == 403
    assert call(fake, "GET", f"/api/v0/instances/{mine}/", key=key).status_code == 403
    assert call(fake, "GET", "/api/v1/instances/", key=key).status_code == 403
    assert call(fake, "DELETE", f"/api/v0/instances/{mine}/", {}, key).ok
    assert [r["id"] for r in fake.live_instances()] == [other]


def test_raising_job_exits_the_container_and_logs_the_traceback() -> None:
    def job(view: InstanceView) -> None:
        view.log("about to fail")
        raise RuntimeError("boom")

    with running_fake_vast(timings=FAST, on_running=job) as fake:
        instance_id = create_id(fake)
        wait_for(lambda: status_of(fake, instance_id) == "exited")
        log = fake.container_log(instance_id)
        assert log[0] == "about to fail" and log[-1] == "RuntimeError: boom"
        assert "RuntimeError: boom" in fake.job_errors(instance_id)[0]


def test_requests_are_recorded_from_many_threads(fake: FakeVast) -> None:
    threads = [threading.Thread(target=search, args=(fake,), kwargs={"limit": 1}) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorded = fake.requests_to("search")
    assert len(recorded) == 8 and sorted(r.call for r in recorded) == list(range(1, 9))
    assert recorded[0].body == {"limit": 1} and recorded[0].method == "POST"
    call(fake, "GET", "/api/v1/instances/", select_filters="{}")
    assert fake.requests[-1].query == {"select_filters": "{}"}


# -- billing -----------------------------------------------------------------------------------
def test_ledger_accrues_while_running_and_stops_at_destroy() -> None:
    with running_fake_vast(timings=FAST, script=[(0.0, "up")], script_exits=False) as fake:
        instance_id = create_id(fake)
        wait_for(lambda: status_of(fake, instance_id) == "running")
        time.sleep(0.1)
        during = fake.ledger().entries[instance_id]
        assert during.gpu_seconds >= 0.1 and during.storage_seconds > during.gpu_seconds
        assert during.gpu_cost > 0 and during.storage_cost > 0
        assert fake.ledger().still_billing == [instance_id]
        call(fake, "DELETE", f"/api/v0/instances/{instance_id}/", {})
        frozen = fake.ledger().entries[instance_id]
        time.sleep(0.05)
        assert fake.ledger().entries[instance_id] == frozen and frozen.destroyed
        assert fake.ledger().still_billing == [] and fake.live_instances() == []
