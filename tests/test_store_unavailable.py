"""A store that cannot be used at all (no AWS credentials, no endpoint listening) is one
infrastructure error, exit 8, said once: never the same line for every partition, exit 3."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from tests.helpers import make_dataset, make_spec, spec_dict, write_spec
from tests.launcher_env import run_cli
from trainer.errors import EXIT_INFRA
from trainer.store import ObjectStore


@pytest.fixture
def spec_on_s3(s3_store: ObjectStore, tmp_path: Path) -> Path:
    make_dataset(s3_store, make_spec())
    return write_spec(tmp_path / "job.yaml", spec_dict())


def test_missing_aws_credentials_are_exit_8_said_once(
    spec_on_s3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    boto3.DEFAULT_SESSION = None  # a fresh session, as conftest starts one: no credentials now
    run = run_cli(["validate", str(spec_on_s3), "--check-data", "--store", "s3://"])
    assert run.code == EXIT_INFRA, run.stderr
    assert run.stderr.count("no AWS credentials found") == 1, run.stderr
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in run.stderr
    assert "pre-flight failed" not in run.stderr and "problem(s)" not in run.stderr
    as_json = run_cli(["validate", str(spec_on_s3), "--check-data", "--store", "s3://", "--json"])
    verdict = json.loads(as_json.stdout)
    assert (verdict["exit_code"], verdict["outcome"]) == (EXIT_INFRA, "infra_error")
    assert "no AWS credentials found" in verdict["error"] and verdict["problems"] == []


def test_an_endpoint_nobody_listens_on_is_exit_8_said_once(
    spec_on_s3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")  # the discard port: nothing listens
    run = run_cli(["validate", str(spec_on_s3), "--check-data", "--store", "s3://"])
    assert run.code == EXIT_INFRA, run.stderr
    assert run.stderr.count("S3 at http://127.0.0.1:9 failed") == 1, run.stderr
    assert "problem(s)" not in run.stderr
