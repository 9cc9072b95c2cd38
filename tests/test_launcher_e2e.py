"""`quantlab-train launch` and friends end to end: the CLI, a fake Vast.ai, loopback S3 and the
real container, with nothing left billing whichever way a launch ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_env import ROOT, Lab, lab, run_cli, tiny_spec, wait_for, with_data
from trainer.errors import (
    EXIT_CANCELLED,
    EXIT_CONFLICT,
    EXIT_DATA,
    EXIT_INFRA,
    EXIT_LIMIT,
    EXIT_NO_OFFER,
    EXIT_SPEC,
    Cancelled,
    exit_code_of,
)
from trainer.job.identity import resolve
from trainer.launcher.payload import ENTRYPOINT
from trainer.launcher.vast import VastClient
from trainer.spec import JobSpec, dump_spec
from trainer.store import ObjectStore
from trainer.store.base import Loc
from trainer.store.layout import Layout

pytestmark = pytest.mark.slow  # subprocesses and end-to-end launches: the slow tier


@pytest.fixture
def env(s3_env: dict[str, str], s3_store: ObjectStore, tmp_path: Path) -> Iterator[Lab]:
    with lab(s3_store, tmp_path) as found:
        yield found


def spec_file(tmp: Path, spec: JobSpec) -> Path:
    path = tmp / f"{spec.job_id}.yaml"
    path.write_text(dump_spec(spec))
    return path


def launch_argv(env: Lab, spec: JobSpec, *extra: str) -> list[str]:
    return [
        "launch", str(spec_file(env.tmp, spec)), "--json", "--vast-url", env.fake.url,
        "--poll-s", "0.2", "--logs-every-s", "0.4",
        "--env", "QUANTLAB_STATUS_EVERY_SEC=0.3", "--env", "QUANTLAB_DEVICE=cpu",
        "--bad-hosts-file", str(env.tmp / "bad-hosts.json"), *extra,
    ]  # fmt: skip


def cli(env: Lab, *argv: str) -> list[str]:
    return [*argv, "--vast-url", env.fake.url]


def status_container(store: ObjectStore, job_id: str) -> str | None:
    try:
        doc = json.loads(store.get(Layout().job(job_id).status))
    except Exception:
        return None
    return str(doc.get("container_id"))


def every_object(store: ObjectStore) -> Iterator[bytes]:
    buckets = Layout()
    for bucket in (buckets.compact_bucket, buckets.artifacts_bucket, buckets.raw_bucket):
        for info in store.list(Loc(bucket, "")):
            yield store.get(info.loc)


def test_launch_wait_json_commits_reports_and_destroys_then_is_already_done(
    env: Lab, s3_env: dict[str, str]
) -> None:
    spec = with_data(env.store, tiny_spec("lt-happy"))
    manifest = Layout().job("lt-happy").manifest
    landed: list[float] = []

    def watch_manifest() -> None:
        deadline = time.monotonic() + 60
        while not landed and time.monotonic() < deadline:
            if env.store.head(manifest) is not None:
                landed.append(time.monotonic())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_manifest, daemon=True)
    watcher.start()
    run = run_cli(launch_argv(env, spec, "--wait"))
    watcher.join(5)

    assert run.code == 0, run.stderr[-3000:]
    result = run.result
    assert result["event"] == "result" and result["outcome"] == "succeeded"
    prefix = "s3://quantlab-artifacts/ml-artifacts/lt-happy/"
    assert result["artifacts"]["model.bin"] == prefix + "model.bin"
    assert result["artifacts"]["manifest.json"] == prefix + "manifest.json"
    assert result["cost_usd"] > 0 and result["estimate_usd"] > 0
    assert result["durations"]["total_s"] > 0 and len(result["attempts"]) == 1
    events = run.events()
    assert all(e["ts"] and e["job_id"] == "lt-happy" for e in events)
    kinds = [e["event"] for e in events]
    for kind in ("validated", "preflight", "offers", "created", "job_started", "destroyed"):
        assert kind in kinds
    states = [e["state"] for e in events if e["event"] == "instance_state"]
    assert states[0] == "pending" and "running" in states
    line = r"^lt-happy  \w+  attempt 1/3  instance \d+ \(1× RTX 3090\)  \$0\.\d{4}/\$5  "
    assert re.search(line, run.stderr, re.M)
    # The verdict's poll reports too: the last line has the outcome, the last step, the budget.
    last = [ln for ln in run.stderr.splitlines() if ln.startswith("lt-happy  ")][-1]
    assert re.match(r"lt-happy  succeeded  attempt 1/3  .*\$0\.\d{4}/\$5  .*step (\d+)/\1 ", last)

    # The result says the result: metrics, rows and the report command, in the NDJSON line
    # and in the summary people read (on stderr with --json), printed once.
    final, rows = result["metrics"], result["rows"]
    assert final["rows"] > 0 and 0 < final["ic"] <= 1 and rows["validation"] == final["rows"]
    assert rows["train"] > 0 and result["report"] == "quantlab-train report lt-happy --open"
    summary = run.stderr[run.stderr.index("job lt-happy: succeeded") :]
    assert run.stderr.count("job lt-happy: succeeded") == 1
    assert (
        f"validation: ic {final['ic']:.4f}" in summary and f"{rows['train']:,} training" in summary
    )
    assert "report: quantlab-train report lt-happy --open" in summary
    # The relay shows the job's last lines, the final evaluation included.
    relayed = [line for e in events if e["event"] == "log" for line in e["lines"]]
    steps = json.loads(env.store.get(manifest))["metrics"]["steps"]
    assert any(f"eval step {steps} " in line for line in relayed), relayed[-8:]
    assert any("committed" in line for line in relayed) and "state: succeeded" in relayed[-1]
    assert f"eval step {steps} " in run.stderr  # relayed to people too
    progress = [e for e in events if e["event"] == "progress"]
    assert max(e["rows_seen"] for e in progress) > 0 and progress[-1]["total_steps"] == steps

    instance_id = result["attempts"][0]["instance_id"]
    destroyed_at = env.fake.account.instances[instance_id].destroyed_at
    # Destroyed within a poll, the verification and the relay of the last lines of the manifest
    # landing (the container, done, destroys itself meanwhile too), not after a timeout. The
    # bound leaves room for a loaded machine: the waits it guards against are tens of seconds.
    assert landed and destroyed_at is not None and destroyed_at - landed[0] < 6.0
    env.assert_clean()

    body = env.fake.requests_to("create")[0].body
    assert body["label"] == "quantlab:lt-happy" and body["runtype"] == "args"
    assert body["onstart"] == ENTRYPOINT and body["cancel_unavail"] is True
    assert body["price"] is None and body["disk"] == 40
    sent = body["env"]
    assert sent["QUANTLAB_JOBSPEC"] == prefix + "jobspec.yaml"
    assert sent["QUANTLAB_VAST_URL"] == env.fake.url
    assert sent["AWS_ENDPOINT_URL_S3"] == s3_env["AWS_ENDPOINT_URL_S3"]
    assert sent["AWS_SESSION_TOKEN"] and sent["AWS_ACCESS_KEY_ID"] != s3_env["AWS_ACCESS_KEY_ID"]
    assert "VAST_API_KEY" not in sent and "QUANTLAB_STORE" not in sent
    stored = env.store.get(Layout().job("lt-happy").jobspec).decode()
    assert stored == dump_spec(resolve(spec, env.store).spec)  # with the data's fingerprint

    status = json.loads(run_cli(cli(env, "status", "lt-happy", "--json")).stdout)
    assert status["state"] == "committed" and status["instances"] is None  # Vast not asked
    assert status["metrics"] == final and status["cost_usd"] == pytest.approx(result["cost_usd"])
    assert [a["instance_id"] for a in status["attempts"]] == [instance_id]
    shipped = run_cli(cli(env, "logs", "lt-happy"))
    assert shipped.code == 0 and "committed" in shipped.stdout  # the log the container shipped

    again = run_cli(launch_argv(env, spec))
    assert again.code == 0 and again.result["outcome"] == "already_done"
    assert "already committed" in again.stderr
    assert env.creates() == 1
    edited = tiny_spec("lt-happy", train={"lr": 0.01})  # same id, another spec
    conflict = run_cli(launch_argv(env, edited))
    assert conflict.code == EXIT_CONFLICT and "holds a different spec" in conflict.stderr
    assert env.creates() == 1

    secrets = [
        env.fake.api_key,
        s3_env["AWS_SECRET_ACCESS_KEY"],
        sent["AWS_SECRET_ACCESS_KEY"],
        sent["AWS_SESSION_TOKEN"],
        env.fake.instance_key(instance_id),
    ]
    texts = [run.stdout, run.stderr, again.stdout, again.stderr, shipped.stdout]
    texts += [env.containers.all_output()]
    texts += ["\n".join(env.fake.container_log(instance_id))]
    texts += [blob.decode("utf-8", "replace") for blob in every_object(env.store)]
    for secret in secrets:
        assert all(secret not in text for text in texts)


def test_a_second_launch_while_running_attaches_instead_of_renting(env: Lab) -> None:
    spec = with_data(env.store, tiny_spec("lt-attach"))
    first = env.launch(spec)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(first.wait()), daemon=True)
    thread.start()
    wait_for(env.fake.live_instances)
    second = run_cli(launch_argv(env, spec))
    thread.join(60)

    assert second.code == 0, second.stderr[-3000:]
    attached = [e for e in second.events() if e["event"] == "attached"]
    assert attached and "watching it instead of renting" in second.stderr
    assert second.result["outcome"] == "succeeded" and second.result["attempts"][0]["attached"]
    assert env.creates() == 1
    assert first.result is not None and first.result.outcome == "succeeded"
    env.assert_clean()


def test_dry_run_does_everything_but_rent(env: Lab) -> None:
    spec = with_data(env.store, tiny_spec("lt-dry"))
    run = run_cli(launch_argv(env, spec, "--dry-run"))
    assert run.code == 0, run.stderr[-3000:]
    kinds = [e["event"] for e in run.events()]
    assert kinds == ["validated", "preflight", "model_proof", "local_dry_run", "offers", "result"]
    proof = run.events()[2]
    assert proof["rows"] == 256 and proof["wall_s"] > 0 and "model ok: mlp" in run.stderr
    local = run.events()[3]
    assert local["skipped"] is False and local["steps"] > 0
    offers = run.events()[4]
    assert offers["estimate_usd"] > 0 and offers["candidates"][0]["offer_id"]
    assert "estimated cost: up to $" in run.stderr
    assert run.result["outcome"] == "dry_run"
    assert env.creates() == 0 and env.fake.calls("search") == 1
    assert env.store.head(Layout().job("lt-dry").jobspec) is None


def test_a_dry_run_without_a_vast_key_runs_the_local_steps_and_says_what_it_skipped(
    env: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = with_data(env.store, tiny_spec("lt-dry-nokey"))
    monkeypatch.delenv("VAST_API_KEY")
    run = run_cli(launch_argv(env, spec, "--dry-run"))
    assert run.code == 0, run.stderr[-3000:]
    kinds = [e["event"] for e in run.events()]
    assert kinds == [
        "validated",
        "preflight",
        "model_proof",
        "local_dry_run",
        "vast_skipped",
        "result",
    ]
    assert run.events()[3]["skipped"] is False and run.events()[3]["steps"] > 0
    skipped = "the live-instance check, the offer search and the cost estimate"
    assert run.events()[4]["skipped"] == skipped
    assert f"skipped {skipped}: no Vast.ai API key" in run.stderr
    assert run.result["outcome"] == "dry_run" and skipped in run.result["reason"]
    assert env.fake.calls("search") == env.creates() == 0
    assert run_cli(launch_argv(env, spec)).code == EXIT_INFRA  # a real launch needs the key


def test_bad_spec_bad_data_and_no_offer_spend_nothing(env: Lab) -> None:
    raw = env.tmp / "typo.yaml"
    raw.write_text(dump_spec(tiny_spec("lt-typo")).replace("  lr:", "  lrr:"))
    bad_spec = run_cli(cli(env, "launch", str(raw), "--json"))
    assert bad_spec.code == EXIT_SPEC and "train.lrr: unknown key (did you mean 'lr'?)" in (
        bad_spec.stderr
    )
    assert bad_spec.result["outcome"] == "invalid_spec"

    missing_key = str(env.tmp / "no-such-key-file")  # the pre-flight needs no Vast.ai key
    no_data = run_cli(launch_argv(env, tiny_spec("lt-nodata"), "--vast-key-file", missing_key))
    assert no_data.code == EXIT_DATA and "pre-flight failed" in no_data.stderr
    assert no_data.result["outcome"] == "data_error"
    assert [e["event"] for e in no_data.events()].count("result") == 1

    spec = with_data(env.store, tiny_spec("lt-nooffer", resources={"gpu_names": ["H200 NVL"]}))
    no_offer = run_cli(launch_argv(env, spec))
    assert no_offer.code == EXIT_NO_OFFER and "no Vast.ai offer matches" in no_offer.stderr
    assert env.creates() == 0 and env.fake.ledger().entries == {}


def test_reap_destroys_what_a_dead_launcher_left_and_keeps_detached_jobs(env: Lab) -> None:
    orphan = with_data(env.store, tiny_spec("lt-orphan", train={"epochs": 10_000}))
    handle = env.launch(orphan)  # never waited on: this launcher "dies" right after renting
    detached = with_data(env.store, tiny_spec("lt-detach", train={"epochs": 10_000}))
    run = run_cli(launch_argv(env, detached, "--detach"))
    assert run.code == 0 and run.result["outcome"] == "detached", run.stderr[-3000:]
    beat = json.loads(env.store.get(Layout().job("lt-detach").launcher_heartbeat))
    assert beat["detached"] is True
    rows = {row["label"]: row["id"] for row in env.fake.live_instances()}
    orphan_id = rows["quantlab:lt-orphan"]
    wait_for(
        lambda: (
            env.fake.live_instances() and status_container(env.store, "lt-orphan") == str(orphan_id)
        ),
        timeout=30,
    )  # fmt: skip  (asking the fake moves its clock)
    foreign = VastClient(env.fake.api_key, env.fake.url).create_instance(
        7_100_007, image="x", disk_gb=10, env={}, label="someone-else", args=[], onstart="/bin/sh"
    )

    listed = json.loads(run_cli(cli(env, "list", "--json")).stdout)
    assert [(j["job_id"], len(j["instances"])) for j in listed] == [
        ("lt-detach", 1), ("lt-orphan", 1)]  # fmt: skip
    status = json.loads(run_cli(cli(env, "status", "lt-orphan", "--json")).stdout)
    assert status["state"] == "running" and status["phase"] in ("starting", "training")
    assert status["instances"]
    logs = run_cli(cli(env, "logs", "lt-orphan", "--tail", "5"))
    assert logs.code == 0 and "quantlab." in logs.stdout

    fresh = json.loads(run_cli(cli(env, "reap", "--json")).stdout)  # within the job's limits
    assert [r["action"] for r in fresh] == ["kept", "kept"]
    time.sleep(0.6)
    reaped = json.loads(run_cli(cli(env, "reap", "--json", "--stale-after-s", "0.5")).stdout)
    actions = {r["job_id"]: (r["action"], r["reason"]) for r in reaped}
    assert actions["lt-orphan"][0] == "destroyed" and "launcher stopped" in actions["lt-orphan"][1]
    assert actions["lt-detach"] == ("kept", "its job is live")
    assert {r["label"] for r in env.fake.live_instances()} == {"quantlab:lt-detach", "someone-else"}

    stopped = run_cli(cli(env, "stop", "lt-detach"))
    assert stopped.code == 0 and "1 instance(s) destroyed" in stopped.stdout
    request = json.loads(env.store.get(Layout().job("lt-detach").stop_request))
    assert request["by"] == "quantlab-train stop"  # (the stopped container rewrites failure.json)
    assert [r["id"] for r in env.fake.live_instances()] == [foreign.instance_id]
    VastClient(env.fake.api_key, env.fake.url).destroy_instance(foreign.instance_id)
    del handle
    env.assert_clean()


def test_the_python_api_handle_reports_and_stops_a_running_job(env: Lab) -> None:
    spec = with_data(env.store, tiny_spec("lt-stop", train={"epochs": 10_000}))
    errors: list[BaseException] = []
    with env.launch(spec) as handle:

        def wait() -> None:
            try:
                handle.wait()
            except Cancelled as exc:
                errors.append(exc)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        (row,) = env.fake.live_instances()
        wait_for(lambda: status_container(env.store, "lt-stop") == str(row["id"]), timeout=30)
        status = handle.status()
        assert status.state == "running" and status.phase in ("starting", "training")
        assert [i["instance_id"] for i in status.instances or []] == [row["id"]]
        assert wait_for(handle.logs, timeout=10)
        handle.stop()
        thread.join(30)
    assert errors and exit_code_of(errors[0]) == EXIT_CANCELLED
    assert handle.result is not None and handle.result.outcome == "cancelled"
    assert handle.result.attempts[0]["reason"] in (
        "stop requested", "stopped by `quantlab-train stop`")  # fmt: skip
    assert env.creates() == 1  # a stopped job is not rented again
    env.assert_clean()


def test_ctrl_c_destroys_the_instance(env: Lab) -> None:
    spec = with_data(env.store, tiny_spec("lt-sigint", train={"epochs": 10_000}))
    code = "import sys; from tests.launcher_env import cli_main; sys.exit(cli_main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *launch_argv(env, spec)],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the launch proves the model in a child process first: seconds, more on a busy machine
        row = wait_for(lambda: (live := env.fake.live_instances()) and live[0], timeout=90)
        wait_for(lambda: status_container(env.store, "lt-sigint") == str(row["id"]), timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_CANCELLED, err[-3000:]
    assert f"instance {row['id']} destroyed" in err and "interrupted" in err
    assert json.loads(out.splitlines()[-1])["outcome"] == "cancelled"
    env.assert_clean()


def test_several_specs_share_one_total_budget(env: Lab) -> None:
    first = with_data(env.store, tiny_spec("lt-many-a", train={"epochs": 10_000}))
    second = tiny_spec("lt-many-b", train={"epochs": 10_000, "seed": 1})
    argv = launch_argv(env, first, "--total-budget", "0.0002")
    argv.insert(2, str(spec_file(env.tmp, second)))  # launch A.yaml B.yaml --options...
    run = run_cli(argv)
    assert run.code == EXIT_LIMIT, run.stderr[-3000:]
    results = [e for e in run.events() if e["event"] == "result"]
    assert sorted(r["job_id"] for r in results) == ["lt-many-a", "lt-many-b"]
    for r in results:
        assert r["outcome"] == "limit_exceeded" and "the total budget is spent" in r["reason"]
    assert sum(r["cost_usd"] for r in results) >= 0.0002
    assert env.creates() == 2
    env.assert_clean()
