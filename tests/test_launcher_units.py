"""The launcher's pure parts, without any server: offers, payload, log tail, events, hosts."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.vast_offers import make_offer
from tests.helpers import make_spec
from trainer.errors import EXIT_INFRA, InfraError, SpecError, exit_code_of
from trainer.launcher.board import Board
from trainer.launcher.credentials import job_credentials, scope_policy, token_seconds
from trainer.launcher.events import Progress, Reporter, status_line
from trainer.launcher.hosts import BadHosts
from trainer.launcher.logtail import GAP, LogTail
from trainer.launcher.offers import (
    bid_for,
    candidates,
    estimate,
    price_mismatch,
    search_filters,
    why_ineligible,
)
from trainer.launcher.ops import JobFiles, reap_reason
from trainer.launcher.payload import (
    ENTRYPOINT,
    container_env,
    create_request,
    job_of,
    label_for,
)
from trainer.launcher.session import key_files_under, read_vast_key, vast_key_files
from trainer.launcher.vast import Instance, Offer, VastAuthError
from trainer.redact import Secrets
from trainer.spec.sections import LimitsSpec, ResourcesSpec
from trainer.store.records import FailureRecord, LauncherHeartbeat, ResultSentinel


def offer(offer_id: int, gpu: str = "RTX 4090", **fields: object) -> Offer:
    return Offer.from_row(make_offer(offer_id, gpu, **fields))


MARKET = [
    offer(1, dph_base=0.40),
    offer(2, dph_base=0.30, reliability2=0.90),  # unreliable
    offer(3, "RTX 3090", dph_base=0.20),
    offer(4, dph_base=0.35, num_gpus=2),  # wrong count
    offer(5, "A100 SXM4", dph_base=1.20),
    offer(6, dph_base=0.25, verification="unverified"),
    offer(7, "GTX 1080", dph_base=0.05),  # not accepted
    offer(8, dph_base=3.00),  # over the cap
    offer(9, dph_base=0.33, inet_down=100.0),  # slow network
]


def test_search_filters_carry_every_resource_constraint() -> None:
    res = ResourcesSpec(gpu_names=("RTX 4090",), min_gpu_ram_gb=20, verified_only=False)
    filters = search_filters(res)
    assert filters["gpu_name"] == {"in": ["RTX 4090"]}
    assert filters["gpu_ram"] == {"gte": 20_000} and filters["num_gpus"] == {"eq": 1}
    assert filters["cuda_max_good"] == {"gte": 12.1} and filters["disk_space"] == {"gte": 40}
    assert filters["dph_total"] == {"lte": 2.0} and filters["inet_down"] == {"gte": 500}
    assert filters["reliability"] == {"gte": 0.98}
    assert filters["verified"] == {"in": [True, False]}
    assert search_filters(ResourcesSpec())["verified"] == {"eq": True}


def test_candidates_are_eligible_cheapest_first_and_skip_bad_hosts() -> None:
    res = ResourcesSpec()
    found = candidates(MARKET, res)
    assert [c.offer.id for c in found] == [3, 1, 5]
    assert why_ineligible(MARKET[1], res) == "reliability 0.9"
    assert why_ineligible(MARKET[6], res) == "GPU GTX 1080 not in gpu_names"
    bad = {MARKET[2].machine_id}
    assert [c.offer.id for c in candidates(MARKET, res, bad_machines=bad, skip_offers={5})] == [1]
    storage = found[0].storage_per_hour
    assert storage == pytest.approx(0.15 * 40 / 720)
    assert found[0].dph == pytest.approx(0.20) and found[0].bid is None


def test_bid_is_the_markup_over_min_bid_capped_by_the_price() -> None:
    res = ResourcesSpec(interruptible=True, bid_markup=1.5, max_price_per_hour=0.5)
    cheap = offer(1, dph_base=0.40)  # min_bid 0.18
    assert bid_for(cheap, res) == pytest.approx(0.27)
    tight = res.model_copy(update={"max_price_per_hour": 0.2})
    capped = bid_for(cheap, tight)
    assert capped is not None and 0.18 <= capped < 0.2
    assert bid_for(cheap, res.model_copy(update={"max_price_per_hour": 0.1})) is None
    low = offer(2, dph_base=0.0001, min_bid=0.0)
    assert bid_for(low, res) == pytest.approx(0.001)
    found = candidates([cheap], res)
    assert found[0].bid == pytest.approx(0.27)
    assert found[0].dph == pytest.approx(0.27 + 0.15 * 40 / 720)


def test_estimate_and_price_read_back() -> None:
    cand = candidates([offer(1, dph_base=0.40)], ResourcesSpec())[0]
    limits = LimitsSpec(max_runtime_minutes=90, provision_timeout_minutes=30)
    found = estimate(cand, limits)
    assert found.hours == pytest.approx(2.0)
    assert found.total_usd == pytest.approx(cand.dph * 2)
    assert found.storage_usd == pytest.approx(cand.storage_per_hour * 2)
    assert price_mismatch(cand, cand.dph, False) is None
    assert price_mismatch(cand, cand.dph * 1.5, False) == (
        f"costs ${cand.dph * 1.5:.4f}/h, the offer said ${cand.dph:.4f}/h"
    )
    assert price_mismatch(cand, cand.dph, True) == "rented interruptible instead of on-demand"


def test_create_request_and_container_env() -> None:
    spec = make_spec(job={"id": "j-1"}, resources={"num_gpus": 2, "disk_gb": 50})
    env = container_env(
        jobspec_uri="s3://quantlab-artifacts/ml-artifacts/j-1/jobspec.yaml",
        num_gpus=2,
        aws={"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "sec", "OTHER": "x"},
        launcher_env={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000", "VAST_API_KEY": "k"},
        vast_url="https://console.vast.ai/",
        extra={"QUANTLAB_STATUS_EVERY_SEC": "5"},
    )
    assert env == {
        "QUANTLAB_JOBSPEC": "s3://quantlab-artifacts/ml-artifacts/j-1/jobspec.yaml",
        "QUANTLAB_NUM_GPUS": "2",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "AKIA1",
        "AWS_SECRET_ACCESS_KEY": "sec",
        "QUANTLAB_STATUS_EVERY_SEC": "5",
    }
    moved = container_env(jobspec_uri="u", num_gpus=1, aws={}, launcher_env={},
                          store_root="file:///tmp/s", vast_url="http://127.0.0.1:8/")  # fmt: skip
    assert moved["QUANTLAB_STORE"] == "file:///tmp/s"
    assert moved["QUANTLAB_VAST_URL"] == "http://127.0.0.1:8"
    with pytest.raises(SpecError, match="QUANTLAB_JOBSPEC: --env accepts only"):
        container_env(jobspec_uri="u", num_gpus=1, aws={}, launcher_env={},
                      extra={"QUANTLAB_JOBSPEC": "elsewhere"})  # fmt: skip
    cand = candidates([offer(1, dph_base=0.4, num_gpus=2)], spec.resources)[0]
    req = create_request(spec, cand, env)
    assert (req.offer_id, req.label, req.disk_gb, req.bid_price) == (1, "quantlab:j-1", 50, None)
    assert req.onstart == ENTRYPOINT and req.args == () and req.cancel_unavail
    assert "sec" not in repr(req)
    assert label_for("j-1") == "quantlab:j-1" and job_of("quantlab:j-1") == "j-1"
    assert job_of("j-1") is None and job_of(None) is None and job_of("quantlab:") is None


def test_log_tail_prints_each_line_once_and_finds_the_sentinel() -> None:
    tail = LogTail()
    assert tail.update("a\nb\nc\n") == ["a", "b", "c"]
    assert tail.update("b\nc\nd\n") == ["d"]
    assert tail.update("b\nc\nd\n") == []
    assert tail.update("c\nd\n") == []  # an older snapshot arriving late
    assert tail.update("x\ny\n") == [GAP, "x", "y"]
    assert tail.result is None
    line = 'QUANTLAB_RESULT {"exit_code": 3, "outcome": "failed", "reason": "no data"}'
    assert tail.update(f"y\n{line}\n") == [line]
    assert tail.result is not None
    assert tail.result.model_dump(exclude_none=True) == {
        "exit_code": 3,
        "outcome": "failed",
        "reason": "no data",
    }
    assert ResultSentinel.parse_line("QUANTLAB_RESULT not-json") is None
    assert ResultSentinel.parse_line("other 1") is None


def test_reporter_writes_ndjson_and_redacts_everything() -> None:
    out, err = io.StringIO(), io.StringIO()
    secrets = Secrets(["s3cret-value-123"])
    reporter = Reporter("j-1", json_out=out, human=err, secrets=secrets, line_every_s=0)
    reporter.emit(
        "created", "key s3cret-value-123 leaked", instance_id=7, say="said s3cret-value-123"
    )
    secrets.add("later-secret-456")
    reporter.progress(Progress(state="training", instance_id=7, step=3, loss=0.5, spent_usd=0.01))
    reporter.emit("log", lines=["later-secret-456 here"])
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["created", "log"]
    assert events[0]["job_id"] == "j-1" and events[0]["instance_id"] == 7 and events[0]["ts"]
    assert events[0]["reason"] == "key [REDACTED] leaked"
    assert events[1]["lines"] == ["[REDACTED] here"]
    assert "s3cret" not in out.getvalue() + err.getvalue() and "said [REDACTED]" in err.getvalue()
    assert reporter.events == events
    line = status_line("j", Progress(state="training", instance_id=7, gpu="1× A", step=3,
                                     epoch=1, loss=0.25, spent_usd=0.5, elapsed_s=12))  # fmt: skip
    assert line == "j  training  instance 7 (1× A)  $0.5000  12s  step 3 epoch 1  loss 0.2500"


def test_plain_progress_is_one_labelled_line_per_job_and_change() -> None:
    err = io.StringIO()
    root = Reporter(human=err, line_every_s=0)
    a, b = root.for_job("job-a"), root.for_job("job-b")
    full = Progress(state="training", instance_id=7, gpu="1× A", attempt=2, max_attempts=3,
                    spent_usd=0.5, budget_usd=20, step=30, total_steps=120, epoch=1, loss=0.25,
                    rows_per_s=12_345, eta_s=75, val_ic=0.0421, elapsed_s=12)  # fmt: skip
    a.progress(full)
    b.progress(Progress(state="provisioning", instance_id=8))
    a.progress(full)  # unchanged: not printed again
    lines = err.getvalue().splitlines()
    assert lines == [
        "job-a  training  attempt 2/3  instance 7 (1× A)  $0.5000/$20  12s  step 30/120 epoch 1"
        "  loss 0.2500  12.3k rows/s  eta 1m15s  val ic +0.0421",
        "job-b  provisioning  instance 8  $0.0000  0s",
    ]
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue()  # append-only, no codes
    a.emit("result", outcome="succeeded")
    assert not err.getvalue().count("succeeded")  # the caller prints the summary, once


def test_bad_hosts_are_remembered_in_a_file_until_they_expire(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "bad-hosts.json"
    hosts = BadHosts(path)
    hosts.add(41, "stuck loading")
    hosts.add(0, "unknown machine ids are not recorded")
    assert 41 in BadHosts(path) and BadHosts(path).machines() == {41}
    assert BadHosts(path, ttl_s=-1).machines() == {41}  # ttl applies to new entries
    expired = BadHosts(path, ttl_s=-1)
    expired.add(42, "x")
    assert 42 not in BadHosts(path)
    path.write_text("not json")
    assert BadHosts(path).machines() == frozenset()
    assert BadHosts(None).machines() == frozenset()


# -- job credentials (STS on the loopback server) ------------------------------------------
def test_scoped_credentials_come_from_sts_with_a_policy_for_the_job_only(
    s3_env: dict[str, str],
) -> None:
    spec = make_spec(job={"id": "j-cred"}, symbols=("btcusdt", "ethusdt"))
    creds = job_credentials(spec)
    assert creds.mode == "scoped" and "ml-artifacts/j-cred/" in creds.note
    assert set(creds.env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert creds.env["AWS_SECRET_ACCESS_KEY"] != s3_env["AWS_SECRET_ACCESS_KEY"]
    assert creds.expires_at is not None and creds.env["AWS_SECRET_ACCESS_KEY"] in creds.secrets()
    assert "AWS_SECRET" not in repr(creds) and creds.env["AWS_SESSION_TOKEN"] not in repr(creds)
    policy = scope_policy(spec, "j-cred")
    reads, artifacts, listing = policy["Statement"]
    assert reads["Resource"] == [
        "arn:aws:s3:::quantlab-compact/features/featureset=v1/exchange=binance/stream=bbo/"
        f"symbol={s}/*" for s in ("btcusdt", "ethusdt")
    ]  # fmt: skip
    assert artifacts["Resource"] == "arn:aws:s3:::quantlab-artifacts/ml-artifacts/j-cred/*"
    assert "s3:PutObject" in artifacts["Action"] and reads["Action"] == "s3:GetObject"
    assert listing["Action"] == "s3:ListBucket"
    many = make_spec(symbols=tuple(f"sym{i:03d}" for i in range(80)))
    assert scope_policy(many, "j")["Statement"][0]["Resource"] == [
        "arn:aws:s3:::quantlab-compact/features/featureset=v1/exchange=binance/stream=bbo/*"
    ]
    assert token_seconds(spec) == ((15 + 240) * 60 + 1800)


def test_without_sts_auto_passes_the_launchers_credentials_and_warns(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")  # nothing listens there
    spec = make_spec(job={"id": "j-pass"})
    with pytest.raises(InfraError, match="cannot mint scoped job credentials with STS"):
        job_credentials(spec, mode="scoped")
    creds = job_credentials(spec)
    assert creds.mode == "passthrough" and creds.expires_at is None
    assert creds.env == {
        "AWS_ACCESS_KEY_ID": s3_env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3_env["AWS_SECRET_ACCESS_KEY"],
    }
    assert "anyone with access to the rented host could read them" in caplog.text
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in caplog.text


# -- reap decisions ----------------------------------------------------------------------------
def _instance(start: float) -> Instance:
    return Instance.from_row({"id": 5, "start_date": start, "actual_status": "running",
                              "cur_state": "running", "label": "quantlab:j"})  # fmt: skip


def _files(**fields: Any) -> JobFiles:
    base: dict[str, Any] = {"committed": False, "failure": None, "status": None,
                            "heartbeat": {"updated_at": 1000.0, "detached": False},
                            "limits": LimitsSpec(heartbeat_timeout_minutes=10)}  # fmt: skip
    base.update(fields)
    if isinstance(base["heartbeat"], dict):
        base["heartbeat"] = LauncherHeartbeat.model_validate(base["heartbeat"])
    if isinstance(base["failure"], dict):
        base["failure"] = FailureRecord.model_validate({"job_id": "j", **base["failure"]})
    return JobFiles(**base)


@pytest.mark.parametrize(("files", "now", "stale", "reason"), [
    (_files(), 1000 + 599, None, None),
    (_files(), 1000 + 601, None, "its launcher stopped: heartbeat 601 s old"),
    (_files(), 1000 + 2, 1.0, "its launcher stopped: heartbeat 2 s old"),
    (_files(heartbeat={"updated_at": 0, "detached": True}), 5000, None, None),
    (_files(heartbeat=None), 1001, None, "no launcher heartbeat for its job"),
    (_files(committed=True), 1001, None, "its job is committed"),
    (_files(failure={"failed_at": "1970-01-01T00:16:50Z", "reason": "boom"}), 1001, None,
     "its job failed: boom"),
    (_files(failure={"failed_at": "1970-01-01T00:01:00Z", "reason": "old"}), 1001, None, None),
    (_files(heartbeat={"updated_at": 0, "detached": True}), 1000 + 255 * 60 + 601, None,
     "it is past its deadline (provision_timeout + max_runtime)"),
])  # fmt: skip
def test_reap_reasons(files: JobFiles, now: float, stale: float | None, reason: str | None) -> None:
    assert reap_reason(_instance(1000.0), files, now, stale) == reason


def test_the_vast_key_is_found_where_the_vastai_cli_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"  # the tests' own home for the vastai CLI's files
    config, legacy = key_files_under(home)
    assert vast_key_files() == key_files_under(Path.home())  # (the function, unpatched)
    assert (config, legacy) == (
        home / ".config" / "vastai" / "vast_api_key",
        home / ".vast_api_key",
    )
    with pytest.raises(VastAuthError) as caught:
        read_vast_key(environ={})
    assert "set VAST_API_KEY, run `vastai set api-key KEY`" in str(caught.value)
    assert exit_code_of(caught.value) == EXIT_INFRA

    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text("legacy-key\n")
    assert read_vast_key(environ={}) == "legacy-key"
    config.parent.mkdir(parents=True)
    config.write_text("  \n")  # an empty file is passed over
    assert read_vast_key(environ={}) == "legacy-key"
    config.write_text("config-key\n")
    assert read_vast_key(environ={}) == "config-key"
    assert read_vast_key(environ={"VAST_API_KEY": "env-key"}) == "env-key"
    monkeypatch.setenv("VAST_API_KEY", "")
    assert read_vast_key() == "config-key"


def test_a_job_that_ends_before_its_first_row_is_drawn_still_gets_its_row() -> None:
    """Three jobs, the first of them done before the watch ever drew it: the last drawing
    holds every job with its outcome."""
    out = io.StringIO()
    board = Board(out)
    board.update("slow-1", Progress(state="training", step=3, total_steps=9, spent_usd=0.0101))
    board.finish("quick-0", "succeeded", 0.1234)
    board.finish("slow-1", "succeeded", 0.2, spent_usd=0.0123)  # the final cost, not the poll's
    board.close()
    last = out.getvalue().split("job ")[-1]  # the final drawing, header onwards
    rows = {line.split()[0]: line for line in last.splitlines()[1:] if line.strip()}
    assert "succeeded" in rows["quick-0"] and "+0.1234" in rows["quick-0"], last
    assert "succeeded" in rows["slow-1"] and "+0.2000" in rows["slow-1"], last
    assert "$0.0123" in rows["slow-1"] and "$0.0101" not in last, last
