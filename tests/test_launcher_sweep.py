"""Sweeps on one rented instance, against the Vast.ai fake with the real container
entrypoint: one rental for every trial, every trial accounted for, nothing left running,
and an outbid mid-sweep continued on the next instance without training a trial twice."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.s3_counter import CountingS3
from tests.fakes.vast_offers import make_offer
from tests.launcher_env import FAST_CLIENT, Lab, lab, options, tiny_spec, wait_for, with_data
from trainer.data.footers import FOOTER_READ
from trainer.job.artifacts import read_manifest
from trainer.launcher.launch import JobHandle, launch_sweep
from trainer.spec.sweep import SweepSpec, sweep_from_dict
from trainer.store import ObjectStore
from trainer.store.base import Loc
from trainer.store.layout import Layout
from trainer.store.records import SweepRecord, read_record

pytestmark = pytest.mark.slow  # subprocesses and end-to-end launches: the slow tier

MARKET = [make_offer(9_300_001 + i, "RTX 4090", dph_base=0.30 + i / 100) for i in range(4)]


@pytest.fixture
def market(s3_env: dict[str, str], s3_store: ObjectStore, tmp_path: Path) -> Iterator[Lab]:
    with lab(s3_store, tmp_path, offers=MARKET) as found:
        yield found


def _sweep(store: ObjectStore, sweep_id: str, **fields: Any) -> SweepSpec:
    base = with_data(store, tiny_spec("lt-sweep-base", **fields.pop("base", {})))
    raw = {
        "sweep": {"id": sweep_id, "name": "lr"},
        "base": base.model_dump(mode="json"),
        "space": {"train.lr": {"log_uniform": [1.0e-4, 0.05]}, "train.seed": {"integer": [0, 3]}},
        "sampler": "random",
        "trials": 8,
        "limits": {"max_cost_usd": 4},
        **fields,
    }
    return sweep_from_dict(raw)


def _record(store: ObjectStore, sweep_id: str) -> SweepRecord | None:
    return read_record(store, Layout().job(sweep_id).sweep, SweepRecord)


def test_a_sweep_of_eight_trials_rents_one_instance_and_commits_every_trial(
    market: Lab, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = _sweep(market.store, "lt-sweep-8")
    with _counted(s3_endpoint, monkeypatch) as counting:
        result = _launch(market, sweep).wait()

    assert result.outcome == "succeeded", result.reason
    assert market.creates() == 1 and len(result.attempts) == 1
    record = _record(market.store, "lt-sweep-8")
    assert record is not None and record.state == "committed"
    assert len(record.trials) == 8 and {t.state for t in record.trials} <= {"complete", "pruned"}
    for t in record.trials:
        assert read_manifest(market.store, Layout().job(t.job_id)) is not None
    assert record.data_reads == 1  # one instance, one data section: read once
    _assert_read_per_instance(counting, market.store, sweep, instances=1)
    assert record.cost_usd == pytest.approx(result.cost_usd, abs=1e-6) and record.attempts
    assert result.artifacts["sweep.json"].endswith("ml-artifacts/lt-sweep-8/sweep.json")
    assert result.metrics is not None and record.best_trial is not None
    assert result.report is not None and record.best_trial.job_id in result.report
    market.assert_clean()


def test_an_outbid_mid_sweep_continues_on_the_next_instance(
    market: Lab, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = _sweep(
        market.store,
        "lt-sweep-spot",
        base={"resources": {"interruptible": True}, "limits": {"max_attempts": 3}},
        trials=6,
    )

    def outbid_after_two_trials() -> None:
        first = min(wait_for(lambda: market.fake.ledger().entries or None, timeout=300))

        def two_done() -> bool:
            record = _record(market.store, "lt-sweep-spot")
            return record is not None and sum(t.state != "running" for t in record.trials) >= 2

        wait_for(two_done, timeout=300, every=0.02)
        market.fake.outbid(first)

    thread = threading.Thread(target=outbid_after_two_trials, daemon=True)
    with _counted(s3_endpoint, monkeypatch) as counting:
        handle = _launch(market, sweep)
        thread.start()
        result = handle.wait()
    thread.join(10)

    assert result.outcome == "succeeded", result.reason
    assert len(result.attempts) == 2 and result.attempts[0]["outcome"] == "retry"
    record = _record(market.store, "lt-sweep-spot")
    assert record is not None and record.state == "committed"
    assert [t.number for t in record.trials] == list(range(6))
    assert all(t.state in ("complete", "pruned") for t in record.trials)
    assert len({t.job_id for t in record.trials}) == 6
    # nothing ran twice to completion: each trial committed exactly once, on either instance
    committed = re.findall(
        r"committed \d+ artifacts to \S+/ml-artifacts/(job-[0-9a-f]+)/",
        market.containers.all_output(),
    )
    assert sorted(committed) == sorted(t.job_id for t in record.trials)
    assert record.data_reads == 2  # each instance read the data once
    _assert_read_per_instance(counting, market.store, sweep, instances=2)
    market.assert_clean()


@contextlib.contextmanager
def _counted(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingS3]:
    """The instances reach S3 through a counter (the launcher passes its endpoint on); the
    launcher's own store does not, so what is counted is what the instances read."""
    counting = CountingS3(endpoint)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(key, counting.url)
    try:
        yield counting
    finally:
        counting.close()


def _assert_read_per_instance(
    counting: CountingS3, store: ObjectStore, sweep: SweepSpec, instances: int
) -> None:
    """Each Parquet byte fetched once per instance, whatever the trials, plus the
    pre-flight's footer read (the last 64 KiB of each file: here most of it)."""
    read = {k: n for k, n in counting.get_bytes.items() if k.endswith(".parquet")}
    listed = store.list(Loc(Layout.of(sweep.base.storage).compact_bucket, "features/"))
    sizes = {
        f"{o.loc.bucket}/{o.loc.key}": o.size for o in listed if o.loc.key.endswith(".parquet")
    }
    assert read.keys() == sizes.keys()
    once = {k: (instances * sizes[k], instances * (sizes[k] + FOOTER_READ)) for k in sizes}
    assert all(low <= read[k] <= high for k, (low, high) in once.items()), (read, once)


def _launch(market: Lab, sweep: SweepSpec) -> JobHandle:
    return launch_sweep(
        sweep,
        options=options(bad_hosts_file=market.tmp / "bad-hosts.json"),
        store=market.store,
        vast_url=market.fake.url,
        client_options=dict(FAST_CLIENT),
    )
