"""On s3rver, a real S3 implementation that accepts `If-None-Match: *` and `If-Match` and
ignores them, nothing is trained, rented or committed: the run, the launch and the CLI are
refused up front, with the endpoint named, before any work that could lose a write."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.vast_server import running_fake_vast
from tests.helpers import make_dataset, make_spec, write_spec
from tests.launcher_env import env_var, run_cli
from trainer.data.synth import SynthConfig
from trainer.errors import EXIT_INFRA, ConditionalWritesIgnored
from trainer.job.run import run_job
from trainer.launcher.launch import launch
from trainer.launcher.reach import ALLOW_LOCAL_STORE
from trainer.store import ObjectStore
from trainer.store.base import Loc
from trainer.store.layout import Layout

pytestmark = pytest.mark.slow  # s3rver runs as a subprocess

TINY = SynthConfig(rows_per_day=400, row_group_size=200)


def _artifacts(store: ObjectStore) -> list[str]:
    return [i.loc.key for i in store.list(Loc(Layout().artifacts_bucket, ""))]


def test_a_run_is_refused_before_it_trains(
    s3rver_store: ObjectStore, s3rver_endpoint: str, tmp_path: Path
) -> None:
    job = make_spec(job={"id": "on-s3rver"})
    make_dataset(s3rver_store, job, TINY)
    with pytest.raises(ConditionalWritesIgnored, match=f"endpoint {s3rver_endpoint} ignores"):
        run_job(job, s3rver_store, device="cpu", workdir=tmp_path / "work")
    assert _artifacts(s3rver_store) == []
    assert not (tmp_path / "work").exists()  # refused before the job's work began

    path = write_spec(tmp_path / "job.yaml", job.model_dump(mode="json", exclude_none=True))
    ran = run_cli(["run", str(path), "--store", "s3://", "--device", "cpu"])
    assert ran.code == EXIT_INFRA
    assert ran.stderr.count("ignores If-None-Match: *") == 1, ran.stderr
    assert "nothing is committed or promoted" in ran.stderr
    assert _artifacts(s3rver_store) == []


def test_a_launch_is_refused_before_anything_is_rented_or_written(
    s3rver_store: ObjectStore, s3rver_endpoint: str
) -> None:
    job = make_spec(job={"id": "launch-on-s3rver"})
    make_dataset(s3rver_store, job, TINY)
    with (
        running_fake_vast() as fake,
        env_var("VAST_API_KEY", fake.api_key),
        env_var(ALLOW_LOCAL_STORE, "1"),  # loopback s3rver: this probe is the refusal tested
    ):
        with pytest.raises(ConditionalWritesIgnored, match=f"endpoint {s3rver_endpoint}"):
            launch(job, store=s3rver_store, vast_url=fake.url)
        assert fake.calls("create") == fake.calls("search") == 0
    assert _artifacts(s3rver_store) == []
