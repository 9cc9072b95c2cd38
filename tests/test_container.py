"""The container entrypoint script, run directly with only the documented environment,
against a loopback S3 server and a fake Vast.ai server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.vast_faults import late
from tests.fakes.vast_server import FakeVast, running_fake_vast
from tests.helpers import make_dataset, make_spec
from trainer.data.synth import SynthConfig
from trainer.errors import EXIT_CONFLICT, EXIT_DATA, EXIT_LIMIT
from trainer.job.artifacts import read_manifest
from trainer.launcher.vast import VastClient
from trainer.spec import JobSpec, dump_spec
from trainer.store import ObjectStore
from trainer.store.layout import Layout, Partition
from trainer.store.lease import Lease
from trainer.store.records import SENTINEL, LeaseRecord, read_record

pytestmark = pytest.mark.slow  # subprocesses and end-to-end launches: the slow tier

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


@pytest.fixture
def fake_vast() -> Iterator[FakeVast]:
    with running_fake_vast(on_running=lambda view: view.killed.wait(120)) as fake:
        yield fake


def _rent(fake: FakeVast) -> tuple[int, str]:
    client = VastClient(fake.api_key, fake.url, retries=0, backoff_s=0.01)
    offer = client.search_offers({}, limit=1)[0]
    created = client.create_instance(
        offer.id,
        image="img",
        disk_gb=10,
        env={},
        label="job",
        args=[],
        onstart="/usr/local/bin/quantlab-entrypoint",
    )
    return created.instance_id, created.instance_api_key


def _container_env(
    s3_env: dict[str, str], fake: FakeVast, instance: tuple[int, str], spec_uri: str
) -> dict[str, str]:
    """Exactly the documented contract, nothing inherited from the test process."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "QUANTLAB_JOBSPEC": spec_uri,
        "QUANTLAB_DEVICE": "cpu",
        "QUANTLAB_STATUS_EVERY_SEC": "0.2",
        "QUANTLAB_VAST_URL": fake.url,
        "CONTAINER_ID": str(instance[0]),
        "CONTAINER_API_KEY": instance[1],
        **{k: v for k, v in s3_env.items() if k.startswith("AWS_")},
    }


def _upload_spec(store: ObjectStore, spec: JobSpec) -> str:
    loc = Layout.of(spec.storage).job(spec.job_id).jobspec
    store.put(loc, dump_spec(spec).encode())
    return str(loc)


def _run(
    env: dict[str, str], store: ObjectStore, spec: JobSpec, *, sigint_ignored: bool = False
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run the entrypoint; meanwhile read status.json as the launcher would. With
    `sigint_ignored`, start it as a shell's background job is started: SIGINT ignored."""
    seen: list[dict[str, Any]] = []
    loc = Layout.of(spec.storage).job(spec.job_id).status
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if (info := store.head(loc)) is not None:
                doc = json.loads(store.get(loc))
                if not seen or seen[-1]["updated_at_epoch"] != doc["updated_at_epoch"]:
                    seen.append(doc)
                del info
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        proc = subprocess.run(
            [str(ENTRYPOINT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if sigint_ignored
            else None,
        )
    finally:
        done.set()
        watcher.join()
    return proc, seen


def _sentinel(stdout: str) -> dict[str, Any]:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(SENTINEL + " "), last
    return json.loads(last.removeprefix(SENTINEL + " "))


def _destroy_calls(fake: FakeVast, instance_id: int) -> list[Any]:
    return [r for r in fake.requests_to("destroy") if r.path.rstrip("/").endswith(str(instance_id))]


def test_successful_job_commits_reports_and_destroys_itself(
    s3_env: dict[str, str], s3_store: ObjectStore, fake_vast: FakeVast
) -> None:
    spec = make_spec(job={"id": "box-ok"}, train={"epochs": 3, "log_every_steps": 2})
    make_dataset(s3_store, spec)
    instance = _rent(fake_vast)
    env = _container_env(s3_env, fake_vast, instance, _upload_spec(s3_store, spec))
    proc, seen = _run(env, s3_store, spec)

    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _sentinel(proc.stdout)
    assert result == {
        "job_id": "box-ok",
        "outcome": "succeeded",
        "exit_code": 0,
        "artifacts": "s3://quantlab-artifacts/ml-artifacts/box-ok/",
    }
    assert read_manifest(s3_store, Layout().job("box-ok")) is not None
    states = [doc["state"] for doc in seen]
    assert states[0] == "starting" and states[-1] == "succeeded"
    assert any(doc["step"] > 0 and doc["state"] == "training" for doc in seen), states
    assert seen[-1]["host"]["cpus"] >= 1

    calls = _destroy_calls(fake_vast, instance[0])
    assert len(calls) == 1
    assert calls[0].headers.get("Authorization") == f"Bearer {instance[1]}"
    assert fake_vast.instance(instance[0]) is None  # gone, nothing billing
    assert proc.stderr.index("committed") < proc.stderr.index("destroy requested")
    log = s3_store.get(Layout().job("box-ok").log(str(instance[0]))).decode()
    assert "committed" in log
    for secret in (instance[1], s3_env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in proc.stdout + proc.stderr + log


def test_failing_job_leaves_a_record_and_still_destroys(
    s3_env: dict[str, str], s3_store: ObjectStore, fake_vast: FakeVast
) -> None:
    spec = make_spec(job={"id": "box-fail"})
    make_dataset(s3_store, spec)
    s3_store.delete(Layout().feature_meta(Partition("binance", "bbo", "btcusdt", "20251202")))
    instance = _rent(fake_vast)
    env = _container_env(s3_env, fake_vast, instance, _upload_spec(s3_store, spec))
    proc, _ = _run(env, s3_store, spec)

    assert proc.returncode == EXIT_DATA
    result = _sentinel(proc.stdout)
    assert result["outcome"] == "failed" and result["exit_code"] == EXIT_DATA
    assert "pre-flight" in result["reason"]
    assert read_manifest(s3_store, Layout().job("box-fail")) is None
    failure = json.loads(s3_store.get(Layout().job("box-fail").failure))
    assert "date=20251202" in failure["reason"]
    assert len(_destroy_calls(fake_vast, instance[0])) == 1
    assert fake_vast.instance(instance[0]) is None


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["plain", "sigint-ignored"])
def test_max_runtime_stops_records_and_destroys(
    s3_env: dict[str, str], s3_store: ObjectStore, fake_vast: FakeVast, sigint_ignored: bool
) -> None:
    """Also when the container was started with SIGINT ignored (a shell's background job):
    the dead-man switch must stop it all the same."""
    spec = make_spec(
        job={"id": "box-slow"}, train={"epochs": 500}, limits={"max_runtime_minutes": 0.04}
    )
    make_dataset(s3_store, spec, SynthConfig(rows_per_day=20_000, row_group_size=5_000))
    instance = _rent(fake_vast)
    env = _container_env(s3_env, fake_vast, instance, _upload_spec(s3_store, spec))
    proc, seen = _run(env, s3_store, spec, sigint_ignored=sigint_ignored)

    assert proc.returncode == EXIT_LIMIT, proc.stderr[-3000:]
    result = _sentinel(proc.stdout)
    assert result["outcome"] == "stopped" and "max_runtime exceeded" in result["reason"]
    failure = json.loads(s3_store.get(Layout().job("box-slow").failure))
    assert "max_runtime exceeded" in failure["reason"]
    assert read_manifest(s3_store, Layout().job("box-slow")) is None
    assert seen[-1]["state"] == "stopped"
    assert fake_vast.instance(instance[0]) is None


def test_missing_environment_is_named_and_exits_with_spec_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ENTRYPOINT)],
        env={"PATH": f"{Path(sys.executable).parent}:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "QUANTLAB_JOBSPEC: required" in proc.stderr
    assert _sentinel(proc.stdout)["exit_code"] == 2


def test_a_second_container_for_a_leased_job_writes_nothing_and_destroys_itself(
    s3_env: dict[str, str], s3_store: ObjectStore, fake_vast: FakeVast
) -> None:
    """Another container holds the job's lease and keeps renewing it: this one says why,
    leaves the job's prefix exactly as it was, and destroys its own instance."""
    spec = make_spec(job={"id": "box-twice"})
    make_dataset(s3_store, spec)
    uri = _upload_spec(s3_store, spec)
    paths = Layout().job("box-twice")
    running = Lease(s3_store, paths.lease, instance="31000999", renew_every_s=0.2)
    running.acquire()
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.2):
            running.renew()

    renewer = threading.Thread(target=renew)
    renewer.start()
    before = {i.loc.key: i.etag for i in s3_store.list(paths.dir) if i.loc != paths.lease}
    instance = _rent(fake_vast)
    try:
        proc, seen = _run(_container_env(s3_env, fake_vast, instance, uri), s3_store, spec)
    finally:
        stop.set()
        renewer.join()

    assert proc.returncode == EXIT_CONFLICT, proc.stderr[-3000:]
    result = _sentinel(proc.stdout)
    assert (result["outcome"], result["cause"], result["holder"]) == (
        "stopped",
        "lease",
        "31000999",
    )
    assert "held by instance 31000999" in result["reason"]
    assert "Nothing was written; this instance destroys itself" in proc.stderr
    after = {i.loc.key: i.etag for i in s3_store.list(paths.dir) if i.loc != paths.lease}
    assert after == before and seen == []  # no status, no log, no failure record
    lease = read_record(s3_store, paths.lease, LeaseRecord)
    assert lease is not None and lease.holder == running.holder
    calls = _destroy_calls(fake_vast, instance[0])
    assert len(calls) == 1 and calls[0].headers.get("Authorization") == f"Bearer {instance[1]}"
    assert fake_vast.instance(instance[0]) is None


def test_a_sigterm_during_the_self_destroy_leaves_a_clean_end_of_log(
    s3_env: dict[str, str], s3_store: ObjectStore, fake_vast: FakeVast
) -> None:
    """Destroying an instance stops its container: the SIGTERM that arrives while the
    destroy request is in flight must not end the log with a traceback."""
    spec = make_spec(job={"id": "box-term"}, train={"epochs": 1})
    make_dataset(s3_store, spec, SynthConfig(rows_per_day=400, row_group_size=200))
    instance = _rent(fake_vast)
    fake_vast.inject("destroy", late(1.5))  # the answer comes after the SIGTERM below
    env = _container_env(s3_env, fake_vast, instance, _upload_spec(s3_store, spec))
    proc = subprocess.Popen(
        [str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while not _destroy_calls(fake_vast, instance[0]) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err[-3000:]
    assert _sentinel(out)["outcome"] == "succeeded"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1].endswith(f"destroy requested for instance {instance[0]}")
