"""A launch whose container could not reach the store is refused before anything is rented:
a local folder, or an S3 endpoint on a loopback, link-local or private address. Local testing
opts in with QUANTLAB_ALLOW_LOCAL_STORE=1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.vast_server import running_fake_vast
from tests.helpers import make_dataset, spec_dict, write_spec
from tests.launcher_env import env_var, run_cli
from trainer.errors import EXIT_SPEC, UnreachableStore
from trainer.launcher.reach import ALLOW_LOCAL_STORE, check_reachable, store_problem
from trainer.spec import spec_from_dict
from trainer.store import ObjectStore
from trainer.store.base import Loc


def _public(host: str) -> list[str]:
    return {"s3.example.com": ["93.184.216.34"], "minio.corp": ["10.1.2.3"]}.get(host, [])


@pytest.mark.parametrize(
    ("endpoint", "words"),
    [
        ("http://127.0.0.1:9000", "is a loopback address"),
        ("http://localhost:9000", "is a loopback address"),
        ("http://[::1]:9000", "is a loopback address"),
        ("http://169.254.169.254", "is a link-local address"),
        ("http://10.0.0.5:9000", "is a private address"),
        ("https://192.168.1.20", "is a private address"),
        ("http://100.64.0.1", "is a private address"),
        ("http://minio.corp:9000", "is a private address (minio.corp resolves to 10.1.2.3)"),
    ],
)
def test_an_endpoint_only_this_network_reaches_is_named_with_the_way_out(
    endpoint: str, words: str
) -> None:
    problem = store_problem("s3://", {"AWS_ENDPOINT_URL_S3": endpoint}, _public)
    assert problem is not None
    assert problem.startswith(f"AWS_ENDPOINT_URL_S3: {endpoint} {words}, which a rented host")
    assert f"{ALLOW_LOCAL_STORE}=1" in problem and "local testing only" in problem


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"AWS_ENDPOINT_URL_S3": "https://s3.example.com"},
        {"AWS_ENDPOINT_URL": "https://s3.example.com"},
        {"AWS_ENDPOINT_URL_S3": "https://no-such-name.invalid"},
        {"AWS_ENDPOINT_URL_S3": "https://s3.example.com", "AWS_ENDPOINT_URL": "http://127.0.0.1"},
    ],
)
def test_aws_s3_and_public_endpoints_pass(env: dict[str, str]) -> None:
    assert store_problem("s3://", env, _public) is None


def test_the_variable_the_container_reads_is_the_one_named() -> None:
    problem = store_problem("s3://", {"AWS_ENDPOINT_URL": "http://10.0.0.5"}, _public)
    assert problem is not None and problem.startswith("AWS_ENDPOINT_URL: http://10.0.0.5 ")


def test_a_local_folder_is_named_and_the_opt_in_lets_it_through() -> None:
    with pytest.raises(UnreachableStore) as caught:
        check_reachable("file:///tmp/store", {})
    (problem,) = caught.value.problems
    assert problem.startswith("--store / QUANTLAB_STORE: file:///tmp/store is a folder on this")
    assert "--store s3://" in problem and f"{ALLOW_LOCAL_STORE}=1" in problem
    check_reachable("file:///tmp/store", {ALLOW_LOCAL_STORE: "1"})


def _spec_file(tmp_path: Path, store: ObjectStore) -> Path:
    raw = spec_dict(job={"id": "unreachable-store"})
    make_dataset(store, spec_from_dict(raw))
    return write_spec(tmp_path / "job.yaml", raw)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "launch"])
def test_launch_on_a_local_folder_is_refused_with_exit_2_and_nothing_rented(
    local_store: ObjectStore, tmp_path: Path, dry_run: bool
) -> None:
    path = _spec_file(tmp_path, local_store)
    with running_fake_vast() as fake, env_var("VAST_API_KEY", fake.api_key):
        argv = ["launch", str(path), "--store", local_store.root, "--vast-url", fake.url]
        run = run_cli([*argv, "--json", *(["--dry-run"] if dry_run else [])])
        assert fake.requests == []  # not even an offer search
    assert run.code == EXIT_SPEC, run.stderr
    assert "--store / QUANTLAB_STORE:" in run.stderr and ALLOW_LOCAL_STORE in run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["exit_code"] == EXIT_SPEC
    assert result["problems"][0].startswith("--store / QUANTLAB_STORE: file://")
    assert not local_store.list(Loc("quantlab-artifacts", "ml-artifacts/"))


def test_launch_on_a_loopback_s3_endpoint_is_refused_before_the_preflight(
    s3_store: ObjectStore, s3_endpoint: str, tmp_path: Path
) -> None:
    path = _spec_file(tmp_path, s3_store)
    with running_fake_vast() as fake, env_var("VAST_API_KEY", fake.api_key):
        run = run_cli(["launch", str(path), "--store", "s3://", "--vast-url", fake.url])
        assert fake.requests == []
    assert run.code == EXIT_SPEC, run.stderr
    assert f"AWS_ENDPOINT_URL_S3: {s3_endpoint} is a loopback address" in run.stderr
    assert not s3_store.list(Loc("quantlab-artifacts", "ml-artifacts/"))
