"""A job is the spec and its data: new data is a new job, never "already done" with the model
of the old data; an explicit id committed on other data is refused by name (real trainer on
CPU, a local store, the Vast.ai fake for the launch)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakes.vast_server import running_fake_vast
from tests.helpers import make_dataset, make_spec, write_spec
from tests.launcher_env import env_var, run_cli
from trainer.data.synth import SynthConfig
from trainer.errors import EXIT_CONFLICT, DatasetChanged, exit_code_of
from trainer.job.identity import resolve, resolve_with
from trainer.job.run import run_job
from trainer.launcher.launch import launch
from trainer.launcher.reach import ALLOW_LOCAL_STORE
from trainer.spec import JobSpec, dump_spec
from trainer.store import ObjectStore
from trainer.store.layout import Layout

TINY = SynthConfig(rows_per_day=400, row_group_size=200)
QUICK = {"epochs": 1, "batch_size": 128, "warmup_steps": 1, "eval_every_steps": 5}


def spec(**sections: dict[str, object]) -> JobSpec:
    return make_spec(train=QUICK, **sections)


def prefix(store: ObjectStore, job_id: str) -> dict[str, bytes]:
    return {i.loc.key: store.get(i.loc) for i in store.list(Layout().job(job_id).dir)}


def test_same_spec_on_the_same_data_is_done_and_on_new_data_is_a_new_job(
    local_store: ObjectStore,
) -> None:
    job = spec()
    make_dataset(local_store, job, TINY)
    first = run_job(job, local_store, device="cpu")
    assert first.outcome == "succeeded" and first.job_id.startswith("job-")
    again = run_job(job, local_store, device="cpu")
    assert (again.outcome, again.job_id) == ("already_done", first.job_id)

    make_dataset(local_store, job, replace(TINY, seed=1))  # other rows, same count and hash
    fresh = run_job(job, local_store, device="cpu")
    assert fresh.outcome == "succeeded" and fresh.job_id != first.job_id
    assert fresh.manifest is not None and first.manifest is not None
    assert fresh.manifest.dataset.fingerprint != first.manifest.dataset.fingerprint
    old, new = (local_store.get(Layout().job(j).model) for j in (first.job_id, fresh.job_id))
    assert old != new


def test_rewriting_the_same_bytes_keeps_the_job_id(local_store: ObjectStore) -> None:
    job = spec()
    make_dataset(local_store, job, TINY)
    before = resolve(job, local_store).job_id
    make_dataset(local_store, job, TINY)  # the same generator run again: equal files
    assert resolve(job, local_store).job_id == before
    make_dataset(local_store, job, replace(TINY, rows_per_day=380))
    assert resolve(job, local_store).job_id != before


def test_an_explicit_id_committed_on_other_data_is_refused_and_names_the_change(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    job = spec(job={"id": "pinned"})
    make_dataset(local_store, job, TINY)
    assert run_job(job, local_store, device="cpu").outcome == "succeeded"
    committed = prefix(local_store, "pinned")
    make_dataset(local_store, job, replace(TINY, rows_per_day=380, seed=1))

    with pytest.raises(DatasetChanged) as caught:
        run_job(job, local_store, device="cpu")
    assert exit_code_of(caught.value) == EXIT_CONFLICT
    assert "job pinned is committed with other data" in caught.value.headline
    assert "drop `job.id`" in caught.value.headline
    assert "date 20251201, symbol btcusdt: 400 → 380 rows" in caught.value.problems[0]
    assert prefix(local_store, "pinned") == committed  # nothing written into the job

    path = write_spec(tmp_path / "pinned.yaml", job.model_dump(mode="json", exclude_none=True))
    ran = run_cli(["run", str(path), "--store", local_store.root, "--device", "cpu"])
    assert ran.code == EXIT_CONFLICT
    assert "committed with other data" in ran.stderr and "400 → 380 rows" in ran.stderr


def test_launch_refuses_an_explicit_id_committed_on_other_data_before_renting(
    local_store: ObjectStore,
) -> None:
    job = spec(job={"id": "pinned-launch"})
    make_dataset(local_store, job, TINY)
    assert run_job(job, local_store, device="cpu").outcome == "succeeded"
    make_dataset(local_store, job, replace(TINY, seed=3))
    with (
        running_fake_vast() as fake,
        env_var("VAST_API_KEY", fake.api_key),
        env_var(ALLOW_LOCAL_STORE, "1"),  # a local store: the refusal tested comes after
    ):
        with pytest.raises(DatasetChanged, match="committed with other data") as caught:
            launch(job, store=local_store, vast_url=fake.url)
        change = caught.value.problems[0]  # same rows, other values
        assert change.startswith("date 20251201, symbol btcusdt: ") and "rows" not in change
        assert fake.calls("create") == fake.calls("search") == 0


def test_a_spec_resolved_on_other_data_is_refused(local_store: ObjectStore) -> None:
    """The container's copy of the launcher's resolved spec must find the same data."""
    job = spec()
    make_dataset(local_store, job, TINY)
    resolved = resolve(job, local_store)
    assert resolve_with(resolved.spec, resolved.plan) == resolved.spec
    assert f"fingerprint: {resolved.spec.data.fingerprint}" in dump_spec(resolved.spec)
    make_dataset(local_store, job, replace(TINY, seed=2))
    with pytest.raises(DatasetChanged, match="changed after the job was launched"):
        resolve(resolved.spec, local_store)
