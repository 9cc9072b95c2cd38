"""Shared fixtures: a real S3 endpoint on loopback (moto's server mode), stores, datasets."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image_env import Engine, require_engine
from trainer.store import ObjectStore, open_store
from trainer.store.layout import Layout

BUCKETS = Layout()
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIATESTKEY0000000000",
    "AWS_SECRET_ACCESS_KEY": "test-secret-0123456789abcdefghijklmnopqrstuv",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background (`nohup`, `cmd &` in a script) inherits SIGINT
    ignored, and so would every launcher it starts: `_thread.interrupt_main()` and a real
    SIGINT then do nothing, and the Ctrl-C tests would fail for want of a Ctrl-C. Take
    SIGINT back here; the processes the tests start then get the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Several test processes (`-n auto`) share the cores: each gets its share of torch's
    # intra-op threads, not one per core each, which would only spin against the others.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        affinity = getattr(os, "sched_getaffinity", None)  # not on macOS
        cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // workers))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, reached over HTTP like any S3-compatible endpoint."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _point_at(endpoint: str, monkeypatch: pytest.MonkeyPatch, **aws: str) -> dict[str, str]:
    """Point both boto3 and pyarrow at `endpoint` through the standard variables, with the
    three layout buckets created."""
    env = {**FAKE_AWS, **aws, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ENDPOINT_URL": endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    import boto3

    # boto3's default session keeps the first credentials it resolved: start a fresh one
    # unless it already holds this server's key pair, so that the stores opened next use it.
    # (A fresh session reloads botocore's service models, 0.1-0.4 s a test.)
    session = boto3.DEFAULT_SESSION
    held = session.get_credentials() if session is not None else None
    if held is None or (held.access_key, held.secret_key, held.token) != (
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
        None,
    ):
        boto3.DEFAULT_SESSION = None
    client = boto3.client("s3", endpoint_url=endpoint)
    for bucket in (BUCKETS.raw_bucket, BUCKETS.compact_bucket, BUCKETS.artifacts_bucket):
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass  # a session-wide server keeps its buckets between tests
        except client.exceptions.BucketAlreadyExists:
            pass
    return env


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Loopback S3 (moto) with a clean server state and the three layout buckets."""
    reset = urllib.request.Request(f"{s3_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()
    yield _point_at(s3_endpoint, monkeypatch)


@pytest.fixture(scope="session")
def s3rver_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """s3rver (npm), a second S3 implementation, on 127.0.0.1. It accepts conditional
    writes and ignores them, which the runner must notice. Found at $QUANTLAB_S3RVER or on
    PATH; `.ci/run` installs it."""
    binary = os.environ.get("QUANTLAB_S3RVER") or shutil.which("s3rver")
    if not binary:
        pytest.skip("s3rver is not installed: npm install s3rver@3.7.1, set QUANTLAB_S3RVER")
    data = tmp_path_factory.mktemp("s3rver")
    proc = subprocess.Popen(
        [binary, "-d", str(data), "-a", "127.0.0.1", "-p", "0", "--no-vhost-buckets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "S3rver listening on 127.0.0.1:PORT"
    while line and "listening on" not in line:
        line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"s3rver did not start: {line!r}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    try:
        yield f"http://{line.strip().rsplit(' ', 1)[-1]}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3rver_env(s3rver_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """s3rver with the three layout buckets emptied (its default key pair)."""
    env = _point_at(
        s3rver_endpoint,
        monkeypatch,
        AWS_ACCESS_KEY_ID="S3RVER",
        AWS_SECRET_ACCESS_KEY="S3RVER",
    )
    import boto3

    client = boto3.client("s3", endpoint_url=s3rver_endpoint)
    for bucket in (BUCKETS.raw_bucket, BUCKETS.compact_bucket, BUCKETS.artifacts_bucket):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
    return env


@pytest.fixture
def s3_store(s3_env: dict[str, str]) -> ObjectStore:
    return open_store("s3://", read_only_buckets=[BUCKETS.raw_bucket])


@pytest.fixture
def s3rver_store(s3rver_env: dict[str, str]) -> ObjectStore:
    return open_store("s3://", read_only_buckets=[BUCKETS.raw_bucket])


@pytest.fixture
def local_store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'store'}", read_only_buckets=[BUCKETS.raw_bucket])


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each test using this runs once on the local folder and once on loopback S3."""
    name = "local_store" if request.param == "local" else "s3_store"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The Docker engine and the training image under test: skips, or fails when asked for."""
    return require_engine()


@pytest.fixture
def layout() -> Layout:
    return BUCKETS


@pytest.fixture(autouse=True)
def _no_real_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never reach a real account: no shared AWS config, no Vast key from the host."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for key in ("VAST_API_KEY", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    from trainer.launcher import session

    # Not the vastai CLI's key files of whoever runs the tests: a home of the test's own.
    home = tmp_path / "home"
    monkeypatch.setattr(session, "vast_key_files", lambda: session.key_files_under(home))
