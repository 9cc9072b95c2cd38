"""Shared fixtures: a real S3 endpoint on loopback (moto's server mode), stores, datasets."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.store import ObjectStore, open_store
from trainer.store.layout import Layout

BUCKETS = Layout()
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIATESTKEY0000000000",
    "AWS_SECRET_ACCESS_KEY": "test-secret-0123456789abcdefghijklmnopqrstuv",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


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


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Point both boto3 and pyarrow at the loopback server through the standard variables,
    with a clean server state and the three layout buckets created."""
    env = {**FAKE_AWS, "AWS_ENDPOINT_URL_S3": s3_endpoint, "AWS_ENDPOINT_URL": s3_endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    reset = urllib.request.Request(f"{s3_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in (BUCKETS.raw_bucket, BUCKETS.compact_bucket, BUCKETS.artifacts_bucket):
        client.create_bucket(Bucket=bucket)
    yield env


@pytest.fixture
def s3_store(s3_env: dict[str, str]) -> ObjectStore:
    return open_store("s3://", read_only_buckets=[BUCKETS.raw_bucket])


@pytest.fixture
def local_store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'store'}", read_only_buckets=[BUCKETS.raw_bucket])


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each test using this runs once on the local folder and once on loopback S3."""
    name = "local_store" if request.param == "local" else "s3_store"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


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
